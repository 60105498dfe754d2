# Issue 16 on the GPU: generation throughput of Mamba-1 / Mamba-2 (eager and CUDA graphs)
# against a Transformer of the same size (ours, all layers attention, and transformers'
# Llama with SDPA): benchmarks/gpu_generation.py. Run from the repo root on the device; needs
# no peers (transformers is in the device image; without it the HF rows are missing).
# Modes (first argument; the rest go to gpu_generation.py, e.g. --batches 1,64 --no-kernel):
#   generation      both prompt lengths, 2048 then 128, in one call (each under its timeout)
#   generation2048  the 2048-token prompt alone, the whole call's time
#   generation128   the 128-token prompt alone
#   smoke           tiny models on the GPU (graph path, kernel timers), under a minute
# Writes under $OUT: gpu_generation_p<L>.{json,md} (the JSON rewritten after each case, so a
# run cut off by its timeout keeps what it measured) and the logs.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
set -o pipefail
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
python3 -c "import transformers; print('transformers', transformers.__version__)" || echo "no transformers: HF rows skipped"
mode=${1:-generation}
shift $(( $# > 0 ? 1 : 0 ))

bench() {  # bench PROMPT TIMEOUT_S [args...]
  local L=$1 limit=$2
  shift 2
  timeout $limit python3 benchmarks/gpu_generation.py --prompts $L --name gpu_generation_p$L --out $OUT "$@" 2>&1 \
      | tee $OUT/generation_p$L.log | grep -v '^{'
}

case "$mode" in
  generation) bench 2048 330 "$@"; bench 128 230 "$@" ;;
  generation2048) bench 2048 570 "$@" ;;
  generation128) bench 128 570 "$@" ;;
  smoke)
    timeout 120 python3 benchmarks/gpu_generation.py --tiny --device cuda --name gpu_generation_smoke \
        --out $OUT "$@" 2>&1 | tee $OUT/generation_smoke.log | grep -v '^{' ;;
  *) echo "unknown mode $mode (generation | generation2048 | generation128 | smoke)"; exit 2 ;;
esac
