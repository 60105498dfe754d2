# The first device call of a fresh session, < 10 minutes, three things at once: the mamba_ssm +
# causal_conv1d build (CPU, background; its packed parts come back for later calls' peers.sh),
# a sweep resumed from committed rows (GPU, background), and the GPU tests of the CUDA scan
# and conv (foreground). Needs .peers carried (../shared/peers/fetch-peers.sh); without it only
# the build fails; the tests and the sweep still run. At most 8
# files: the peer parts (4-5), pytest.log, sweep.tar.gz (the sweep's log, csvs and rows).
# Usage: bash benchmarks/device/first_call.sh [TOML] [SWEEP_SECONDS] [WORKERS] (RESTORE= as
# in issue11_ablation.sh).
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MIMETIC_CUDA_CACHE=/tmp/mimetic-cuda-cache
set -o pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
toml=${1:-experiments/copy_seeds.toml}; secs=${2:-480}; workers=${3:-3}
final_out=$OUT
mkdir -p /tmp/peers-out /tmp/sweep-out
OUT=/tmp/peers-out bash benchmarks/device/build_pack_peers.sh > /tmp/peers-build.log 2>&1 &
peers=$!
OUT=/tmp/sweep-out bash benchmarks/device/issue11_ablation.sh "$toml" "$secs" "$workers" \
    > /tmp/sweep-out/driver.log 2>&1 &
sweep=$!
timeout 200 python3 -m pytest -q -p no:cacheprovider -k "not every_specialization" \
    tests/ops/test_cuda_selective_scan.py tests/ops/test_cuda_causal_conv1d.py 2>&1 \
    | tee $final_out/pytest.log | tail -8
wait $sweep; cat /tmp/sweep-out/driver.log
tar -C /tmp/sweep-out -czf $final_out/sweep.tar.gz .
wait $peers; tail -15 /tmp/peers-build.log
cp /tmp/peers-out/peers-site.tar.xz.part-* $final_out/ 2>/dev/null
ls -la $final_out
