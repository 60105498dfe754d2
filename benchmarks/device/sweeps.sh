# Several sweeps in one device call, one after another, each under its own time limit, all
# their outputs (log, csv, summary, rows, and the unfinished runs' newest checkpoints) back
# as sweeps.tar.gz.part-* (15 MiB parts). Usage:
#   bash benchmarks/device/sweeps.sh TOML:SECONDS:WORKERS [TOML:SECONDS:WORKERS ...]
# Resuming on a fresh machine: unpack the parts here into .restore/ (git-ignored:
#   cat sweeps.tar.gz.part-* | tar -C .restore -xzf -) and carry .restore; each sweep first
# unpacks .restore/runs_<name>.tar into runs/, so its finished points are skipped and its
# cut-off packs resume from their checkpoints (exactly: checkpoint/resume is exact).
# RESTORE_<name>=ROWS.jsonl instead resumes from finished rows only (issue11_ablation.sh).
# PARALLEL=1 runs the sweeps at once (one process each, sharing the GPU): small packs leave
# most of an H200 idle, so a large sweep beside them costs them little.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MIMETIC_CUDA_CACHE=/tmp/mimetic-cuda-cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
final_out=$OUT; stage=/tmp/sweeps-out; mkdir -p $stage
one_sweep() {
  IFS=: read -r toml secs workers <<< "$1"
  name=$(basename "$toml" .toml); restore_var=RESTORE_$name
  echo "== $name ($secs s, $workers workers)"
  [ -f .restore/runs_$name.tar ] && tar -xf .restore/runs_$name.tar && echo "restored runs/$name"
  RESTORE=${!restore_var:-} OUT=$stage bash benchmarks/device/issue11_ablation.sh "$toml" "$secs" "$workers"
  python3 benchmarks/device/resumable_runs.py runs/$name $stage/runs_$name.tar
}
for spec in "$@"; do
  if [ "${PARALLEL:-0}" = 1 ]; then one_sweep "$spec" > $stage/$(basename "${spec%%:*}" .toml).sweeps.txt 2>&1 &
  else one_sweep "$spec"; fi
done
wait; cat $stage/*.sweeps.txt 2>/dev/null
tar -C $stage -czf - . | split -b 15M - $final_out/sweeps.tar.gz.part-
ls -la $stage $final_out
