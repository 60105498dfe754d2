"""The eval history of a sweep's runs: every evaluation of every point, finished or not.

A row of ``results.csv`` holds a run's final numbers; how it got there (accuracy against
training steps, the Mamba paper's reading of its long runs) is in each run's
``metrics.jsonl``. :func:`collect_history` gathers those records, each tagged with its grid
point, into the records of ``history.csv``; a sweep cut off by a time limit still gets the
history of its unfinished runs (their records up to the newest evaluation).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..metrics import read_metrics
from .config import GridPoint

HISTORY_CSV = "history.csv"


def collect_history(points: list[GridPoint], runs: Path) -> list[dict[str, Any]]:
    """One record per evaluation of each point's run under ``runs``, in point order then by
    step: ``run`` (its id), the point's grid keys and extra axes, then the eval record's
    scalar fields (``step``, ``token_acc``, ``loss``, ``train_loss``, ...). Points without a
    ``metrics.jsonl`` contribute nothing; an unreadable one is skipped with a warning (the
    history is a view of the runs, so it never stops the sweep)."""
    records: list[dict[str, Any]] = []
    for point in points:
        try:
            evals = read_metrics(runs / point.run_id)
        except ValueError as e:
            warnings.warn(f"history: {e}; run {point.run_id} left out of {HISTORY_CSV}", stacklevel=2)
            continue
        tags = {"run": point.run_id, **point.to_dict()}
        for rec in sorted(evals, key=lambda r: r["step"]):
            scalars = {k: v for k, v in rec.items() if isinstance(v, (int, float, str)) or v is None}
            records.append({**tags, **scalars})
    return records
