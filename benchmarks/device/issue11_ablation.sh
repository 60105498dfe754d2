# Issue 11 on the GPU: a sweep file's grid (default: the 10-seed ablation), its rows collected
# under $OUT even when the time limit cuts the sweep short. Usage:
#   bash benchmarks/device/issue11_ablation.sh [TOML] [SECONDS] [WORKERS]
# The sweep goes to runs/$name in the repository (ignored by git; kept between calls on a
# warm device machine), so a second call resumes where the first was cut off. A later session
# (a fresh machine) resumes from the rows an earlier one brought back: RESTORE=ROWS.jsonl
# (e.g. experiments/results/copy_seeds_rows.jsonl) writes them into runs/$name
# first (benchmarks/device/sweep_rows.py), and the sweep skips those points.
# ONLY="length=256 model.d_model=64" trains only those points (`mimetic sweep --only`, one per
# word), in the same folder: a grid too large for one call goes in slices.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
toml=${1:-experiments/ablation_seeds.toml}; secs=${2:-300}; workers=${3:-2}
name=$(basename "$toml" .toml)
dir=runs/$name
[ -n "$RESTORE" ] && python3 benchmarks/device/sweep_rows.py "$toml" "$RESTORE" "$dir"
start=$(date +%s)
only=(); for kv in ${ONLY:-}; do only+=(--only "$kv"); done
timeout "$secs" python3 -m mimetic.cli sweep "$toml" --out "$dir" --workers "$workers" --no-progress "${only[@]}" \
    > $OUT/$name.log 2>&1; echo "sweep rc $? in $(( $(date +%s) - start )) s"
tail -5 $OUT/$name.log
cp "$dir/results.csv" $OUT/$name.csv 2>/dev/null; cp "$dir/summary.csv" $OUT/${name}_summary.csv 2>/dev/null
python3 - "$dir" "$name" <<'PY'
import glob, json, os, sys
folder, name = sys.argv[1:]
rows = [json.load(open(f)) for f in sorted(glob.glob(f"{folder}/runs/*/row.json"))]
with open(os.path.join(os.environ["OUT"], f"{name}_rows.jsonl"), "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
print(len(rows), "rows")
PY
