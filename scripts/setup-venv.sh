#!/usr/bin/env bash
# Sourced by demo.sh and test.sh: create and activate .venv with CPU torch 2.13.0 and this
# package (plus the extras named in $1, e.g. "test").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".${1:+[$1]}"
