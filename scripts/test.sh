#!/usr/bin/env bash
# Set up a virtual environment (CPU torch 2.13.0, the package and its test extras) and run
# the whole test suite. Triton kernels run on the CPU through the Triton interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test]"
TRITON_INTERPRET=1 python -m pytest -q "$@"
