"""Some points of a sweep: ``mimetic sweep X.toml --only layer=Mamba1 --only seed=0,1``.

A selection maps grid keys (``task``, ``init``, ``layer``, ``d_state``, ``length``, ``seed``)
and extra axes (their dotted paths, ``model.d_model``) to the values wanted; a point is
selected when each key's value is one of them. It reruns one row of a committed result, or
cuts a grid too large for one sitting into slices that share the sweep's folder (rows of
earlier slices stay in ``results.csv``). Every key and value is checked against the grid, so a
typo is an error, not an empty sweep.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .config import GRID_KEYS, GridPoint, SweepConfig, _fmt_value


def parse_only(specs: Sequence[str]) -> dict[str, list[str]]:
    """``["layer=Mamba1", "seed=0,1"]`` -> ``{"layer": ["Mamba1"], "seed": ["0", "1"]}``; a key
    given twice takes the values of both."""
    only: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ValueError(f"--only takes KEY=VALUE[,VALUE...], got {spec!r}")
        only.setdefault(key, []).extend(v.strip() for v in values.split(","))
    return only


def _matches(value: Any, wanted: Any) -> bool:
    """``value`` (a point's, as in its results.csv row) is ``wanted``: equal, or for a string
    (the command line's) the same text as in the run folder name, or the same number
    (``1e-3`` is ``0.001``); ``none`` is the value of an axis that does not apply."""
    if not isinstance(wanted, str):
        return value == wanted and type(value) is type(wanted)
    if value is None:
        return wanted.lower() in ("none", "na")
    if wanted == str(value) or wanted == _fmt_value(value):
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(wanted) == value
        except ValueError:
            return False
    return False


def select_points(cfg: SweepConfig, points: Sequence[GridPoint],
                  only: Mapping[str, Sequence[Any]]) -> list[GridPoint]:
    """The ``points`` whose value of each key of ``only`` is one of its values, in order.

    Raises ValueError (one line) for a key that is not a grid key or an extra axis of ``cfg``,
    a value no point has, or a combination that selects nothing."""
    keys = (*GRID_KEYS, *cfg.axis_paths)
    rows = [p.to_dict() for p in points]
    for key, wanted in only.items():
        if key not in keys:
            raise ValueError(f"--only {key}: not an axis of this sweep (axes: {', '.join(keys)})")
        if isinstance(wanted, (str, bytes)) or not wanted:
            raise ValueError(f"--only {key}: give a list of values, got {wanted!r}")
        present = list(dict.fromkeys(_fmt_value(r[key]) if r[key] is not None else "none" for r in rows))
        for w in wanted:
            if not any(_matches(r[key], w) for r in rows):
                raise ValueError(f"--only {key}={w}: no point has it (values: {', '.join(present)})")
    chosen = [p for p, r in zip(points, rows)
              if all(any(_matches(r[key], w) for w in wanted) for key, wanted in only.items())]
    if not chosen:
        asked = " ".join(f"{k}={','.join(map(str, v))}" for k, v in only.items())
        raise ValueError(f"--only {asked}: no point has all of these")
    return chosen
