#!/usr/bin/env bash
# Set up .venv (CPU torch 2.13.0, the package and its test and ray extras), lint, and run the
# whole test suite. Triton kernels run on the CPU through the Triton interpreter.
set -euo pipefail
. "$(dirname "$0")/setup-venv.sh" test,ray
ruff check .   # lint and import order (pyproject.toml [tool.ruff])
TRITON_INTERPRET=1 python -m pytest -q "$@"
