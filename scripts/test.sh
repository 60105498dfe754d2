#!/usr/bin/env bash
# Set up .venv (CPU torch 2.13.0, the package and its test and ray extras) and run the whole
# test suite. Triton kernels run on the CPU through the Triton interpreter.
set -euo pipefail
. "$(dirname "$0")/setup-venv.sh" test,ray
TRITON_INTERPRET=1 python -m pytest -q "$@"
