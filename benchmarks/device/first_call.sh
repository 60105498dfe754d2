# The first device call of a fresh session, < 10 minutes, three things at once: the mamba_ssm +
# causal_conv1d build (CPU, background; its packed parts come back for later calls' peers.sh),
# sweeps resumed from committed rows (GPU, background, benchmarks/device/sweeps.sh with
# PARALLEL=1), and the GPU tests of the CUDA scan and conv (foreground). Needs .peers carried
# (../shared/peers/fetch-peers.sh); without it only the build fails; the tests and the sweeps
# still run. At most 8 files: the peer parts (4, ~57 MB), pytest.log, sweeps_rows.tar.gz; the
# sweeps' checkpoints stay on the device (runs/, kept while the machine is warm), because the
# peer parts take nearly all of the 64 MiB a call returns.
# Usage: [RESTORE_<name>=ROWS.jsonl ...] bash benchmarks/device/first_call.sh SPEC [SPEC ...]
# with SPEC as in sweeps.sh (TOML:SECONDS:WORKERS[:ONLY]).
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MIMETIC_CUDA_CACHE=/tmp/mimetic-cuda-cache
set -o pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
final_out=$OUT
mkdir -p /tmp/peers-out /tmp/sweep-out
OUT=/tmp/peers-out bash benchmarks/device/build_pack_peers.sh > /tmp/peers-build.log 2>&1 &
peers=$!
PARALLEL=1 RESUME_MIB=0 OUT=/tmp/sweep-out bash benchmarks/device/sweeps.sh "$@" > /tmp/sweep-driver.log 2>&1 &
sweep=$!
timeout 240 python3 -m pytest -q -p no:cacheprovider \
    tests/ops/test_cuda_selective_scan.py tests/ops/test_cuda_causal_conv1d.py 2>&1 \
    | tee $final_out/pytest.log | tail -8
wait $sweep; grep -v '^{' /tmp/sweep-driver.log | tail -40
cp /tmp/sweep-out/sweeps_rows.tar.gz $final_out/
wait $peers; tail -6 /tmp/peers-build.log
cp /tmp/peers-out/peers-site.tar.xz.part-* $final_out/ 2>/dev/null
ls -la $final_out
