# Issue 16: where the CUDA selective scan's time goes. ncu of our forward and backward kernels
# (mimetic_ss_fwd / mimetic_ss_bwd) at 8x1536x2048x16, bf16 and fp32 (delta softplus, D, z,
# delta bias: the benchmark's inputs), layout A (the default there): speed of light, occupancy,
# warp stall reasons, scheduler and memory sections. Writes ncu_scan_<dtype>.txt into
# $NCU_DIR (default $OUT).
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MIMETIC_CUDA_CACHE=/tmp/mimetic-cuda-cache
cat > /tmp/ncu_scan.py <<'PY'
import sys, torch
sys.path.insert(0, "benchmarks")
from gpu import ss_inputs, ss_fwd_bwd
from mimetic.ops.selective_scan.cuda import selective_scan_cuda
dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[sys.argv[1]]
t = ss_inputs(8, 1536, 2048, 16, dtype)
t = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
dout = torch.randn(8, 1536, 2048, device="cuda", dtype=dtype)
for _ in range(2):
    for v in t.values():
        v.grad = None
    ss_fwd_bwd(selective_scan_cuda, t, dout)
torch.cuda.synchronize()
PY
dir=${NCU_DIR:-$OUT}; mkdir -p $dir
for dt in ${DTYPES:-bf16 fp32}; do
  timeout ${NCU_SECS:-120} ncu --kernel-name regex:mimetic_ss --launch-skip 2 --launch-count 2 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
      --section InstructionStats \
      --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' python3 /tmp/ncu_scan.py $dt > $dir/ncu_scan_$dt.txt 2>&1
  echo "ncu $dt rc $?"; grep -E "Duration|Achieved Occupancy|Registers Per|Stall|Issue Slots Busy|Compute \(SM\) Throughput|Memory Throughput|No Eligible|Warp Cycles Per Issued|issue_stalled" $dir/ncu_scan_$dt.txt | head -60
done
