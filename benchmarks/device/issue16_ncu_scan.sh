# Issue 16: where the CUDA selective scan's time goes. ncu of our kernels (mimetic_ss_fwd /
# mimetic_ss_bwd) in the second of `gpu.py --profile`'s two rounds (a forward without
# gradients, then forward + backward) at 8x1536x2048x16, bf16 and fp32 (delta softplus, D, z,
# delta bias: the benchmark's inputs), layout A (the default there): speed of light, occupancy,
# warp stall reasons, scheduler and memory sections. Writes ncu_scan_<dtype>.txt into
# $NCU_DIR (default $OUT).
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 MIMETIC_CUDA_CACHE=/tmp/mimetic-cuda-cache
dir=${NCU_DIR:-$OUT}; mkdir -p $dir
for dt in ${DTYPES:-bf16 fp32}; do
  timeout ${NCU_SECS:-120} ncu --kernel-name regex:mimetic_ss --launch-skip 3 --launch-count 3 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
      --section InstructionStats \
      --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' python3 benchmarks/gpu.py --profile --profile-backend cuda --profile-dtype $dt > $dir/ncu_scan_$dt.txt 2>&1
  echo "ncu $dt rc $?"; grep -E "Duration|Achieved Occupancy|Registers Per|Stall|Issue Slots Busy|Compute \(SM\) Throughput|Memory Throughput|No Eligible|Warp Cycles Per Issued|issue_stalled" $dir/ncu_scan_$dt.txt | head -90
done
