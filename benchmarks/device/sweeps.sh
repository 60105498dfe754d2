# Several sweeps in one device call, one after another, each under its own time limit, all
# their outputs (log, csv, summary, rows) back as one sweeps.tar.gz. Usage:
#   bash benchmarks/device/sweeps.sh TOML:SECONDS:WORKERS [TOML:SECONDS:WORKERS ...]
# RESTORE_<name>=ROWS.jsonl resumes sweep <name> from rows an earlier call brought back (as
# RESTORE= in issue11_ablation.sh). On a warm machine a sweep cut off here resumes from
# runs/<name> in the next call.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MIMETIC_CUDA_CACHE=/tmp/mimetic-cuda-cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
final_out=$OUT; stage=/tmp/sweeps-out; mkdir -p $stage
for spec in "$@"; do
  IFS=: read -r toml secs workers <<< "$spec"
  name=$(basename "$toml" .toml); restore_var=RESTORE_$name
  echo "== $name ($secs s, $workers workers)"
  RESTORE=${!restore_var:-} OUT=$stage bash benchmarks/device/issue11_ablation.sh "$toml" "$secs" "$workers"
done
tar -C $stage -czf $final_out/sweeps.tar.gz .
ls -la $stage
