# Issue 11 on the GPU: a sweep file's grid (default: the 10-seed ablation), its rows collected
# under $OUT even when the time limit cuts the sweep short. Usage:
#   bash benchmarks/device/issue11_ablation.sh [TOML] [SECONDS] [WORKERS]
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
toml=${1:-experiments/ablation_seeds.toml}; secs=${2:-300}; workers=${3:-2}
name=$(basename "$toml" .toml)
start=$(date +%s)
timeout "$secs" python3 -m mimetic.cli sweep "$toml" --out /tmp/$name --workers "$workers" --no-progress \
    > $OUT/$name.log 2>&1; echo "sweep rc $? in $(( $(date +%s) - start )) s"
tail -5 $OUT/$name.log
cp /tmp/$name/results.csv /tmp/$name/summary.csv $OUT/ 2>/dev/null
python3 - "$name" <<'PY'
import glob, json, os, sys
name = sys.argv[1]
rows = [json.load(open(f)) for f in sorted(glob.glob(f"/tmp/{name}/runs/*/row.json"))]
with open(os.path.join(os.environ["OUT"], f"{name}_rows.jsonl"), "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")
print(len(rows), "rows")
PY
