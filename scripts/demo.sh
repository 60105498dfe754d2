#!/usr/bin/env bash
# Set up a virtual environment (CPU torch 2.13.0 and the package) and run the main job:
# a small CPU run of the copy task, default vs mimetic initialization.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e .
mimetic demo "$@"
