"""Pack what a cut-off sweep needs to resume on another machine: every run folder's small
files (row.json, result.json, metrics.jsonl, ...) and, for a run that has not finished, only
its newest checkpoint (the older ones kept beside it are a fallback on the same disk, not
needed to resume). Finished runs' checkpoints are left out: their rows are what is kept.

    python benchmarks/device/resumable_runs.py runs/NAME OUT.tar

``sweeps.sh`` unpacks OUT.tar into the repository root on the next machine.
"""
from __future__ import annotations

import sys
import tarfile
from pathlib import Path

from mimetic.train.checkpoint import CHECKPOINT_DIR, list_checkpoints
from mimetic.train.loop import RESULT_FILE


def pack(sweep_dir: Path, out: Path) -> int:
    """Write ``out`` (paths relative to the repository root); return its size in bytes."""
    with tarfile.open(out, "w") as tar:
        for path in sorted(sweep_dir.rglob("*")):
            if path.is_file() and CHECKPOINT_DIR not in path.relative_to(sweep_dir).parts:
                tar.add(path)
        for run in sorted(p.parent for p in sweep_dir.glob(f"runs/*/{CHECKPOINT_DIR}")):
            found = list_checkpoints(run)
            if found and not (run / RESULT_FILE).exists():
                tar.add(found[-1][1])
    return out.stat().st_size


if __name__ == "__main__":
    sweep_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    if not sweep_dir.is_dir():
        sys.exit(f"{sweep_dir}: no such sweep folder")
    print(f"{out}: {pack(sweep_dir, out) / 2**20:.1f} MiB to resume {sweep_dir}")
