# Issue 13 part 3 on a multi-GPU host (nvidia-h200-x8; on fewer GPUs the larger counts are
# skipped). Run from the repo root on the device, one call per argument; writes under $OUT.
#   check: 1 vs 2 processes (DDP, FSDP2) on NCCL, same global batch: loss gaps (~1 min)
#   ddp:   DDP scaling of a 24-layer d_model 768 Mamba-2 LM at 1/2/4/8 GPUs (~4-6 min)
#   fsdp:  the same with FSDP2 (beside the 1-GPU baseline)
#   sweep: a Ray sweep's wall time vs GPU time / K at K = 1/2/4/8 GPUs (needs `ray` importable)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
set -o pipefail
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version())"
run() { timeout 580 python3 benchmarks/ddp_scaling.py --timeout 240 --json $OUT/$1.json "${@:2}" 2>&1 \
        | tee $OUT/$1.log | tail -20; }
case "${1:-check}" in
check) run check --sections check ;;
ddp)   run ddp --sections ddp --modes ddp ;;
fsdp)  run fsdp --sections ddp --modes fsdp ;;
sweep)
  python3 -c "import ray; print('ray', ray.__version__)" || { echo "ray is not installed here"; exit 3; }
  run sweep --sections sweep ;;
esac
