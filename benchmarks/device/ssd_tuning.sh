# The SSD kernels' tuning experiments on the GPU (issue 16), ~5 minutes: the SSD tests on the
# GPU, the dC kernel prototype against the current kernel (benchmarks/ssd_dc_prototype.py:
# outputs compared at real sizes, then timed; SSD_DC_S=0 skips it), and the tilings of every
# SSD kernel beside mamba_ssm's (benchmarks/ssd_tiles.py; with .peerbin carried, else without
# the peer rows). Then the selective scan's layout pairs named in SCAN_PAIRS (e.g. C2/A2) at
# the shapes SCAN_SHAPES, if set. Run from the repo root on the device; writes under $OUT.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MIMETIC_CUDA_CACHE=/tmp/mimetic-cuda-cache
set -o pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
[ -d .peerbin ] && source benchmarks/device/peers.sh
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
mkdir -p $OUT/ssd_dc $OUT/ssd_tiles
timeout ${SSD_TESTS_S:-150} python3 -m pytest -q -p no:cacheprovider tests/ops/test_ssd.py 2>&1 | tee $OUT/ssd_pytest.log | tail -6
[ "${SSD_DC_S:-100}" != 0 ] && timeout ${SSD_DC_S:-100} python3 benchmarks/ssd_dc_prototype.py --out $OUT/ssd_dc 2>&1 | tee $OUT/ssd_dc.log | tail -12
timeout ${SSD_TILES_S:-200} python3 benchmarks/ssd_tiles.py --out $OUT/ssd_tiles 2>&1 | tee $OUT/ssd_tiles.log | grep -v '^{' | tail -16
if [ -n "${SCAN_PAIRS:-}" ]; then
  mkdir -p $OUT/scan
  timeout ${SCAN_S:-150} python3 benchmarks/issue16_cuda_scan.py --out $OUT/scan --sections bench \
      --shapes ${SCAN_SHAPES:-3} --layouts ${SCAN_LAYOUTS:-C2} --pairs $SCAN_PAIRS 2>&1 | tee $OUT/scan.log | grep -v '^{' | tail -24
fi
