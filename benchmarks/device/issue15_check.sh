# Issue 15 on the GPU, one call: the ensemble's correctness numbers, a packed sweep against a
# one-at-a-time sweep of the same points, then sweep_speed.py's three sections (before/after
# in one process on one machine). Run from the repo root on the device; writes under $OUT.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
set -o pipefail
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
timeout 120 python3 benchmarks/ensemble_gpu_check.py --out $OUT/egc --steps 100 2>&1 | tee $OUT/egc.log | tail -25
timeout 200 python3 benchmarks/sweep_equivalence.py experiments/copy_length.toml --steps 300 \
    --grid layer=Mamba1,Mamba2 --grid d_state=16 --grid length=64,256 --grid seed=0,1 \
    --out $OUT/equiv 2>&1 | tee $OUT/equiv.log | tail -25
timeout ${SS_TIMEOUT:-400} python3 benchmarks/sweep_speed.py --out $OUT/ss --budget-s ${SS_BUDGET:-300} 2>&1 \
    | tee $OUT/ss.log | grep -v '^{' | tail -60
