#!/usr/bin/env bash
# GPU device machine only, from the repo root with .peerbin carried (benchmarks/logs/gpu_kernel_log.md, "Device
# workflow"): the GPU half of issue 4's "done when" in two device calls of < 10 minutes,
# logs and JSON under $OUT (at most 8 files come back):
#   bash benchmarks/device/full_run.sh tests   # kernel, module and model tests at real sizes
#   bash benchmarks/device/full_run.sh bench   # every benchmark vs mamba_ssm, one process each
# Expected times, from the same parts run separately on an H200 (2026-12-02): tests ~4
# min with -n 14, bench ~6 min (not yet run as this script).
set -uo pipefail
source benchmarks/device/peers.sh || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
case "${1:-}" in
  tests)
    timeout 500 python3 -m pytest -q -n 14 -p no:cacheprovider --durations=15 \
      tests/ops tests/modules tests/models > "$OUT/pytest.log" 2>&1
    echo "pytest rc=$?"; tail -5 "$OUT/pytest.log" ;;
  bench)
    mkdir -p "$OUT/ss" "$OUT/ssdconv"
    timeout 130 python3 benchmarks/gpu.py --ops ss --variants auto,lane --out "$OUT/ss" \
      > "$OUT/gpu_ss.log" 2>&1; echo "gpu.py ss rc=$?"
    timeout 220 python3 benchmarks/gpu.py --ops ssd,conv --out "$OUT/ssdconv" \
      > "$OUT/gpu_ssdconv.log" 2>&1; echo "gpu.py ssd,conv rc=$?"
    timeout 100 python3 benchmarks/gpu_layers.py --precision bf16 --no-compile --out "$OUT" \
      > "$OUT/gpu_layers.log" 2>&1; echo "gpu_layers rc=$?"
    timeout 120 python3 benchmarks/gpu_decode.py --out "$OUT" \
      > "$OUT/gpu_decode.log" 2>&1; echo "gpu_decode rc=$?"
    for f in gpu_ss gpu_ssdconv gpu_layers gpu_decode; do tail -12 "$OUT/$f.log"; done ;;
  *) echo "usage: $0 tests|bench" >&2; exit 2 ;;
esac
