# Issue 16 on the GPU: the run-time compiled CUDA causal conv1d (ops/causal_conv1d/cuda.py).
# Run from the repo root on the device, with .peerbin carried (causal_conv1d for the
# side-by-side; without it those columns stay empty). Writes under $OUT:
# issue16_cuda_conv.{json,md}, the logs. Modes: all (default) | check | bench | tiles | sanitize.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MIMETIC_CUDA_CACHE=/tmp/mimetic-cuda-cache
set -o pipefail
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
[ -d .peerbin ] && source benchmarks/device/peers.sh
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
mode=${1:-all}
if [ "$mode" = all ] || [ "$mode" = check ]; then
  # the CPU tests (compile of every specialization) and the GPU parity tests, then the wide check
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/ops/test_cuda_causal_conv1d.py 2>&1 \
      | tee $OUT/pytest.log | tail -15
  timeout 240 python3 benchmarks/issue16_cuda_conv.py --out $OUT --sections compile,check 2>&1 \
      | tee $OUT/check.log | grep -v '^{' | tail -60
fi
if [ "$mode" = sanitize ]; then
  # memcheck and racecheck on a few small forward + backward cases
  for tool in memcheck racecheck; do
    timeout 250 compute-sanitizer --tool $tool --print-limit 20 python3 -m pytest -q -x -p no:cacheprovider \
        tests/ops/test_cuda_causal_conv1d.py -k "gpu_matches_reference and 2x24x203x4 and bfloat16" 2>&1 \
        | tee $OUT/sanitize_$tool.log | tail -15
  done
fi
if [ "$mode" = all ] || [ "$mode" = bench ]; then
  mkdir -p $OUT/bench
  timeout $([ "$mode" = all ] && echo 140 || echo 550) python3 benchmarks/issue16_cuda_conv.py --out $OUT/bench \
      --sections bench $([ "$mode" = all ] && echo --quick) 2>&1 | tee $OUT/bench.log | grep -v '^{' | tail -40
fi
if [ "$mode" = tiles ]; then
  # alternative tiles under each layout's name (kernel time at the layer shapes, bf16)
  mkdir -p $OUT/tiles
  timeout 550 python3 benchmarks/issue16_cuda_conv.py --out $OUT/tiles --sections tiles 2>&1 \
      | tee $OUT/tiles.log | grep -v '^{' | tail -40
fi
