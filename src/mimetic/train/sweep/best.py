"""Each seed's best run over tuned axes: how Zoology reads its MQAR grid (the best learning
rate of every configuration), as ``[sweep] best_over = ["train.lr"]``.

``best_rows`` keeps, among the rows that differ only in the ``over`` axes, the one with the
highest ``metric``; ``summary_best.csv`` and the plots of such a sweep are drawn from those.
"""
from __future__ import annotations

import math
from typing import Any

from .config import GRID_KEYS, axis_columns, freeze_value


def _score(row: dict[str, Any], metric: str) -> float | None:
    value = row.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None  # a diverged run (error row) or a missing metric is never the best
    return float(value)


def best_rows(rows: list[dict[str, Any]], over: tuple[str, ...] | list[str], metric: str) -> list[dict[str, Any]]:
    """Per (grid keys incl. seed, the other extra axes): the row with the highest ``metric``
    among those that differ only in the ``over`` axes, in the order the groups first appear.
    The kept row still names its ``over`` values (which learning rate won). A group none of
    whose rows has the metric (every run diverged) is left out."""
    keys = list(GRID_KEYS) + [a for a in axis_columns(rows) if a not in over]
    best: dict[tuple, tuple[float, dict[str, Any]]] = {}
    order: dict[tuple, None] = {}  # the groups in order of first appearance
    for row in rows:
        key = tuple(freeze_value(row.get(k)) for k in keys)
        order.setdefault(key)
        score = _score(row, metric)
        if score is not None and (key not in best or score > best[key][0]):
            best[key] = (score, row)
    return [best[k][1] for k in order if k in best]
