# Issue 15 on the GPU. `checks`: the ensemble's correctness numbers and a packed sweep against a
# one-at-a-time sweep of the same points. `speed`: sweep_speed.py's three sections (before and
# after, in one process on one machine). `scaling`: pack size vs the steady step and its kernel fraction. Run from the repo root on the device; writes under $OUT.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
set -o pipefail
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
case "${1:-checks}" in
checks)
  timeout 150 python3 benchmarks/ensemble_gpu_check.py --out $OUT/egc --steps 100 2>&1 | tee $OUT/egc.log | tail -25
  timeout 300 python3 benchmarks/sweep_equivalence.py experiments/copy_length.toml --steps 300 \
      --grid layer=Mamba1,Mamba2 --grid d_state=16 --grid length=64,256 --grid seed=0,1 \
      --out $OUT/equiv 2>&1 | tee $OUT/equiv.log | tail -30 ;;
speed)
  timeout 560 python3 benchmarks/sweep_speed.py --out $OUT/ss --budget-s 420 2>&1 \
      | tee $OUT/ss.log | grep -v '^{' | tail -60 ;;
scaling)
  timeout 560 python3 benchmarks/sweep_speed.py --out $OUT/ss --sections scaling --budget-s 480 2>&1 \
      | tee $OUT/ss_scaling.log | grep -v '^{' | tail -30 ;;
esac
