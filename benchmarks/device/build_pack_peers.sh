#!/usr/bin/env bash
# GPU device machine only, from the repo root with .peers carried (../shared/peers/fetch-peers.sh
# fetches it): builds mamba_ssm and causal_conv1d for sm_90 in parallel (~7 min on an H100
# machine) and packs /tmp/peers-site into $OUT as xz parts of 15 MiB (4 parts, ~57 MB).
# Here: put the parts in .peerbin/ (git-ignored), then carry .peerbin and source
# benchmarks/device/peers.sh at the start of each device command.
set -uo pipefail
t0=$SECONDS
sed 's/^build mamba_ssm.*$/build mamba_ssm-2.3.2.post1.tar.gz \&\& exit 0/' .peers/build-on-device.sh > /tmp/b_mamba.sh
sed -e 's/^build mamba_ssm.*$//' -e 's/^\[ "\${1:-}" = "--with-conv" \] && { \(.*\) }$/\1/' .peers/build-on-device.sh > /tmp/b_conv.sh
grep -n "^build" /tmp/b_mamba.sh /tmp/b_conv.sh
export MAX_JOBS=${MAX_JOBS:-8}
bash /tmp/b_mamba.sh > /tmp/b_mamba.log 2>&1 &
bash /tmp/b_conv.sh > /tmp/b_conv.log 2>&1 &
wait
cat /tmp/b_mamba.log /tmp/b_conv.log
echo "builds done in $((SECONDS - t0)) s"
PYTHONPATH=/tmp/peers-site python3 -c "import mamba_ssm, selective_scan_cuda, causal_conv1d_cuda; print('ok', mamba_ssm.__version__)"
# Debug info is a fifth of the two extensions (89 -> 72 MB unpacked, 62 -> 57 MB packed): what
# is left fits the 64 MiB a call carries beside the working tree and a sweep's checkpoints.
strip --strip-debug /tmp/peers-site/*.so
du -sh /tmp/peers-site; ls /tmp/peers-site
tar -C /tmp -cf - peers-site | xz -T16 -6 | split -b 15M - $OUT/peers-site.tar.xz.part-
ls -la $OUT; echo "total $((SECONDS - t0)) s"
