# Issue 13 part 3 on a multi-GPU host (nvidia-h200-x8; on fewer GPUs the larger counts are
# skipped). Run from the repo root on the device; writes under $OUT.
#   ddp:   DDP and FSDP2 scaling of a 24-layer d_model 768 Mamba-2 LM at 1/2/4/8 GPUs (~5-8 min)
#   sweep: a Ray sweep's wall time vs GPU time / K at K = 1/2/4/8 GPUs (needs `ray` importable)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
set -o pipefail
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version())"
case "${1:-ddp}" in
ddp)
  timeout 580 python3 benchmarks/ddp_scaling.py --sections ddp --fsdp --timeout 240 \
      --json $OUT/ddp_scaling.json 2>&1 | tee $OUT/ddp_scaling.log | tail -20 ;;
sweep)
  python3 -c "import ray; print('ray', ray.__version__)" || { echo "ray is not installed here"; exit 3; }
  timeout 580 python3 benchmarks/ddp_scaling.py --sections sweep --timeout 240 \
      --json $OUT/sweep_gpus.json 2>&1 | tee $OUT/sweep_gpus.log | tail -20 ;;
esac
