#!/usr/bin/env bash
# Set up .venv (CPU torch 2.13.0 and the package) and run the main job: a small CPU run of
# the copy task, default vs mimetic initialization (table + runs/demo/demo.png).
set -euo pipefail
. "$(dirname "$0")/setup-venv.sh" ""  # explicit "": no extras, not our own args
mimetic demo "$@"
