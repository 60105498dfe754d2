# Source on the GPU device machine, from the repo root, with .peerbin carried: unpacks the
# mamba_ssm + causal_conv1d build (sm_90) that build_pack_peers.sh returned, in seconds
# instead of ~7 minutes of compiling, and puts them and src/ on PYTHONPATH.
# The parts are ~57 MB of the 64 MiB a call carries, tracked files included: a call that
# carries .peerbin needs the tracked tree under ~7 MB, so move the committed resume sets
# (experiments/resume/*.tar, ~9.5 MB) aside for that call and back after it.
cat .peerbin/peers-site.tar.xz.part-* | xz -d | tar -C /tmp -xf - \
  && export PYTHONPATH=/tmp/peers-site:$PWD/src:${PYTHONPATH:-} \
  && python3 -c "import mamba_ssm, causal_conv1d; print('peers ok', mamba_ssm.__version__, causal_conv1d.__version__)"
