# One device call (< 10 minutes) of every issue-16 kernel and layer benchmark side by side with
# mamba_ssm / causal_conv1d in one process each, with .peerbin carried: the CUDA scan, the
# CUDA conv, the SSD, the layers (about 7 minutes: run 5 took 357 s with the SSD cut at 90 s).
# Everything comes back as one bench.tar.gz.
set -uo pipefail
source benchmarks/device/peers.sh || exit 1
export PYTHONUNBUFFERED=1 MIMETIC_CUDA_CACHE=/tmp/mimetic-cuda-cache
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
d=/tmp/bench; mkdir -p $d/scan $d/conv $d/ssd
# every layout (same forward and backward) and the mixed pairs of SCAN_PAIRS
timeout ${SCAN_S:-200} python3 benchmarks/issue16_cuda_scan.py --out $d/scan --sections bench \
    --pairs ${SCAN_PAIRS:-A/A2k8,A/A2} > $d/scan.log 2>&1; echo "scan rc=$?"
timeout ${CONV_S:-100} python3 benchmarks/issue16_cuda_conv.py --out $d/conv --sections bench > $d/conv.log 2>&1; echo "conv rc=$?"
timeout ${SSD_S:-160} python3 benchmarks/gpu.py --ops ssd --out $d/ssd > $d/ssd.log 2>&1; echo "ssd rc=$?"
timeout ${LAYERS_S:-110} python3 benchmarks/gpu_layers.py --precision bf16 --no-compile --out $d > $d/layers.log 2>&1; echo "layers rc=$?"
tar -C /tmp -czf $OUT/bench.tar.gz bench
for f in scan/issue16_cuda_scan.md conv/issue16_cuda_conv.md; do tail -30 $d/$f 2>/dev/null; done
tail -n 15 $d/ssd.log $d/layers.log
