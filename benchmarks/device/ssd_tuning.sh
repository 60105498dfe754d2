# The SSD kernels' tuning experiments on the GPU (issue 16), no peers needed, ~4 minutes: the
# dC kernel prototype against the current kernel (benchmarks/ssd_dc_prototype.py: outputs
# compared at real sizes, then timed), and the tilings of every SSD kernel
# (benchmarks/ssd_tiles.py). Run from the repo root on the device; writes under $OUT.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
set -o pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
mkdir -p $OUT/ssd_dc $OUT/ssd_tiles
timeout ${SSD_DC_S:-100} python3 benchmarks/ssd_dc_prototype.py --out $OUT/ssd_dc 2>&1 | tee $OUT/ssd_dc.log | tail -12
timeout ${SSD_TILES_S:-200} python3 benchmarks/ssd_tiles.py --out $OUT/ssd_tiles 2>&1 | tee $OUT/ssd_tiles.log | grep -v '^{' | tail -16
