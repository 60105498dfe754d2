# One device call: issue 15's packed-path measurement, then issue 11's ablation sweep.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
set -o pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 250 python3 benchmarks/sweep_speed.py --out $OUT/ss --sections packed --budget-s 190 2>&1 \
    | tee $OUT/ss.log | grep -v '^{' | tail -25
bash benchmarks/device/issue11_ablation.sh experiments/ablation_seeds.toml ${ABL_SECS:-300} 1
