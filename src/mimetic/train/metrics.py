"""Metric sinks: a JSONL file (one line per evaluation) and, if installed, TensorBoard."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of ``<out_dir>/metrics.jsonl`` (empty list if there is none).

    A torn last line (a kill or a full disk during the append) is dropped with a warning:
    its record is the only one lost, and a resumed run rewrites the file without it. A bad
    line elsewhere is a ValueError naming the file and line.
    """
    path = Path(out_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for n, (lineno, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not an eval record")
        except ValueError as e:
            if n == len(lines) - 1:
                warnings.warn(f"{path}:{lineno}: dropped a torn last line ({e})", stacklevel=2)
                break
            raise ValueError(f"{path}:{lineno}: not a metrics record ({e})") from None
        records.append(record)
    return records


class MetricsLogger:
    """Append eval records to ``<out_dir>/metrics.jsonl`` and optionally TensorBoard.

    With ``out_dir=None`` it only keeps nothing (the trainer keeps the history in memory).
    ``truncate_after(step)`` drops records past ``step``: after resuming from a checkpoint at
    ``step``, lines a crashed run wrote beyond it would otherwise appear twice.
    """

    def __init__(self, out_dir: str | os.PathLike | None, tensorboard: bool = False, fresh: bool = True):
        self.path = Path(out_dir) / METRICS_FILE if out_dir is not None else None
        self.tb = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if fresh and self.path.exists():
                self.path.unlink()
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:  # tensorboard is optional
                    warnings.warn("tensorboard=True but TensorBoard is not installed; skipping it", stacklevel=2)
                else:
                    self.tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        if self.path is None or not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path.parent) if r["step"] <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)

    def log(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
