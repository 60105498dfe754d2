# One device call of a fresh session (no peers needed), < 10 minutes: the GPU tests of the
# CUDA kernels (the scan's graph-capture and real-size tests included, and the conv's
# parity), the CUDA conv's quick benchmark, then copy_seeds.toml resumed from its committed
# rows for the time left. At most 8 files come back: pytest.log, conv_bench.md, and the
# sweep's log, results.csv, summary.csv and rows. Usage: bash benchmarks/device/session_call.sh [SWEEP_SECONDS]
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MIMETIC_CUDA_CACHE=/tmp/mimetic-cuda-cache
set -o pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# (the compile-everything tests run in CI; here they would only cost time)
timeout 200 python3 -m pytest -q -p no:cacheprovider -k "not every_specialization" \
    tests/ops/test_cuda_selective_scan.py tests/ops/test_cuda_causal_conv1d.py 2>&1 | tee $OUT/pytest.log | tail -8
mkdir -p /tmp/conv && timeout 100 python3 benchmarks/issue16_cuda_conv.py --out /tmp/conv --sections bench --quick \
    > /tmp/conv/log 2>&1; cp /tmp/conv/issue16_cuda_conv.md $OUT/conv_bench.md 2>/dev/null; tail -20 $OUT/conv_bench.md
RESTORE=${RESTORE-experiments/results/copy_seeds_h200_partial_rows.jsonl} \
    bash benchmarks/device/issue11_ablation.sh experiments/copy_seeds.toml ${1:-300} 3
