# Several sweeps in one device call, one after another, each under its own time limit, all
# their outputs (log, csv, summary, rows, and the unfinished runs' newest checkpoints) back
# as sweeps_rows.tar.gz (rows, csv, logs) and sweeps.tar.gz.part-* (the checkpoints, 15 MiB
# parts). Usage:
#   bash benchmarks/device/sweeps.sh TOML:SECONDS:WORKERS[:ONLY] [TOML:SECONDS:WORKERS[:ONLY] ...]
# ONLY (optional): the points to train, `mimetic sweep --only` selections joined by "+", e.g.
# experiments/mqar_zoology_small.toml:540:3:length=256+model.d_model=64.
# Resuming on a fresh machine: unpack the parts here into .restore/ (git-ignored:
#   cat sweeps.tar.gz.part-* | tar -C .restore -xzf -) and carry .restore; each sweep first
# unpacks .restore/runs_<name>.tar into runs/, so its finished points are skipped and its
# cut-off packs resume from their checkpoints (exactly: checkpoint/resume is exact).
# RESTORE_DIR=experiments/resume takes the resume sets committed there instead (tracked files
# travel anyway, so they cost no carry). RESTORE_<name>=ROWS.jsonl instead resumes from
# finished rows only (issue11_ablation.sh).
# PARALLEL=1 runs the sweeps at once (one process each, sharing the GPU): small packs leave
# most of an H200 idle, so a large sweep beside them costs them little.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MIMETIC_CUDA_CACHE=/tmp/mimetic-cuda-cache
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
final_out=$OUT; stage=/tmp/sweeps-out; mkdir -p $stage
one_sweep() {
  IFS=: read -r toml secs workers only <<< "$1"
  name=$(basename "$toml" .toml); restore_var=RESTORE_$name
  echo "== $name ($secs s, $workers workers${only:+, only $only})"
  restore_tar=${RESTORE_DIR:-.restore}/runs_$name.tar
  # A warm machine keeps runs/ between calls: resume from it, newer than any resume set.
  if [ -d runs/$name ]; then echo "resuming runs/$name, kept on this machine"
  elif [ -f $restore_tar ]; then tar -xf $restore_tar && echo "restored runs/$name from $restore_tar"; fi
  ONLY=${only//+/ } RESTORE=${!restore_var:-} OUT=$stage bash benchmarks/device/issue11_ablation.sh "$toml" "$secs" "$workers"
  python3 benchmarks/device/resumable_runs.py runs/$name $stage/runs_$name.tar
}
for spec in "$@"; do
  if [ "${PARALLEL:-0}" = 1 ]; then one_sweep "$spec" > $stage/$(basename "${spec%%:*}" .toml).sweeps.txt 2>&1 &
  else one_sweep "$spec"; fi
done
wait; cat $stage/*.sweeps.txt 2>/dev/null
# The rows, csv and logs come back as their own small file, and the checkpoints in parts: the
# device returns at most 8 files and 64 MiB per call, and drops files past that, so a large
# resume set (MQAR's vocab-8192 packs: ~5 MB a model) must not take the results with it.
tar -C $stage -czf $final_out/sweeps_rows.tar.gz --exclude='runs_*.tar' .
du -sh $stage/runs_*.tar 2>/dev/null
# Resume sets smallest first, as many as fit in RESUME_MIB (default 56: the 64 MiB a call
# returns, less the rows); a set that does not fit stays behind, said here, and resumes on
# this machine only while it is warm (runs/ is kept between calls).
keep=(); total=0
for t in $(cd $stage && ls -S -r runs_*.tar 2>/dev/null); do
  mib=$(( ($(stat -c %s $stage/$t) + 2**20 - 1) / 2**20 ))
  if [ $(( total + mib )) -le ${RESUME_MIB:-56} ]; then keep+=($t); total=$(( total + mib ))
  else echo "resume set $t ($mib MiB) left on the device: past the ${RESUME_MIB:-56} MiB returned"; fi
done
[ ${#keep[@]} -gt 0 ] && tar -C $stage -czf - "${keep[@]}" | split -b 15M - $final_out/sweeps.tar.gz.part-
ls -la $stage $final_out
