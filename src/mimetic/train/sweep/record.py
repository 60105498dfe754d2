"""What a sweep folder remembers of the configs behind its results, so that re-running an
edited sweep file never mixes rows of two configs.

* ``runs/<run_id>/settings.json``: the settings that shape that point's result (task knobs,
  model config, TrainConfig fields, init variant, [eval] table) and their SHA-256. Written
  before the point trains; a point whose folder holds other settings is refused, naming
  the point and the first changed setting (new points, e.g. an added seed, are fine).
* ``sweep_history.jsonl``: one line per distinct sweep config run into the folder (time,
  hash, the parsed config), so ``sweep.json`` (always the latest config) loses nothing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from ..resume import NEUTRAL_FIELDS, change_allowed, changed_settings, without_retired
from .config import GridPoint, SweepConfig, mamba_config

SETTINGS_FILE = "settings.json"
HISTORY_FILE = "sweep_history.jsonl"
#: Sweep fields that do not change any result (names, what the plots and summaries show).
PRESENTATION_FIELDS = ("name", "description", "metric", "best_over")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def point_settings(cfg: SweepConfig, point: GridPoint) -> dict[str, Any]:
    """The settings that shape ``point``'s row, JSON-normalised (tuples as lists)."""
    task = cfg.task_for(point)
    train = {k: v for k, v in cfg.train_for(point).items() if k not in NEUTRAL_FIELDS}
    init, init_cfg = cfg.init_for(point)
    model = mamba_config(cfg.model_for(point), task.vocab_size, point, init, init_cfg).to_dict()
    settings = {"task": task.to_dict(), "model": model, "train": train, "seed": point.seed,
                "init": {"init": init, "init_cfg": init_cfg}, "eval": cfg.eval}
    return json.loads(json.dumps(settings, default=str))


def sweep_hash(cfg: SweepConfig) -> str:
    """SHA-256 of the parsed sweep config, without its presentation fields."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in PRESENTATION_FIELDS}
    return _digest(d)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); it records the settings behind that point's "
                         f"result, so delete the folder {path.parent} to run the point again") from None


def check_and_record(cfg: SweepConfig, points: list[GridPoint], runs: Path, out: Path) -> None:
    """Refuse ``points`` whose run folder under ``runs`` was made with other settings (one
    line naming how many, the first point and setting); then write the missing
    ``settings.json`` files and append the config to ``sweep_history.jsonl`` if it is new."""
    clashes = []
    fresh: list[tuple[Path, dict[str, Any]]] = []
    for p in points:
        run_dir = runs / p.run_id
        settings = point_settings(cfg, p)
        path = run_dir / SETTINGS_FILE
        if path.exists():
            stored = _read_json(path)
            digest = _digest(settings)
            if stored.get("sha256") != digest and _digest(without_retired(stored.get("settings", {}))) != digest:
                diffs = changed_settings(stored.get("settings", {}), settings) or [("settings", "?", "?")]
                # train.allow_changed lets an unfinished point go on under the new settings (the
                # run's resume checks the same list); a finished row keeps the settings it had.
                allow = cfg.train_for(p).get("allow_changed", ())
                if not (run_dir / "row.json").exists() and all(change_allowed(d[0], allow) for d in diffs):
                    warnings.warn(f"{p.run_id}: resuming with changed " + ", ".join(
                        f"{n} ({old!r} -> {new!r})" for n, old, new in diffs), stacklevel=2)
                    fresh.append((path, settings))
                else:
                    clashes.append((p.run_id, diffs[0]))
        elif not (run_dir / "row.json").exists():  # a finished row of an older sweep is left as it is
            fresh.append((path, settings))
    if clashes:
        run_id, (name, old, new) = clashes[0]
        raise ValueError(f"{out}: the sweep config changed for {len(clashes)} point(s) already run here "
                         f"(e.g. {run_id}: {name} was {old!r}, now {new!r}); run it into another --out, "
                         "or delete those run folders")
    for path, settings in fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"sha256": _digest(settings), "settings": settings}, indent=1))
        os.replace(tmp, path)
    _append_history(cfg, out)


def _append_history(cfg: SweepConfig, out: Path) -> None:
    path = out / HISTORY_FILE
    digest = sweep_hash(cfg)
    last = None
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        try:
            last = json.loads(lines[-1]).get("sha256") if lines else None
        except ValueError:  # a torn last line: write the entry again
            last = None
    if last == digest:
        return
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "sha256": digest, "config": dataclasses.asdict(cfg)}
    torn = path.exists() and not path.read_text().endswith("\n") and path.stat().st_size > 0
    with path.open("a") as f:
        f.write(("\n" if torn else "") + json.dumps(entry, default=str) + "\n")
