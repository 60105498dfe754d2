"""benchmarks/device/sweep_rows.py: rows of a cut-off sweep, restored into a new folder,
are points the sweep there skips; rows of another grid are refused."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from mimetic.train.sweep import run_sweep
from mimetic.train.sweep.config import load_sweep

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "experiments" / "smoke.toml"


def _tool():
    spec = importlib.util.spec_from_file_location("sweep_rows", ROOT / "benchmarks" / "device" / "sweep_rows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(points):
    return [dict(p.to_dict(), final_token_acc=0.5 + i / 100, steps=40) for i, p in enumerate(points)]


def test_restored_rows_are_skipped(tmp_path):
    points = load_sweep(SMOKE).points()
    rows = _rows(points)
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sweep"
    assert _tool().restore(str(SMOKE), str(rows_file), str(out)) == len(points)

    def no_training(*args, **kwargs):
        raise AssertionError("a restored point was trained again")

    result = run_sweep(SMOKE, out, progress=False, plot=False, model_factory=no_training)
    assert result.skipped == len(points)
    got = {json.dumps(r, sort_keys=True) for r in result.rows}
    assert got == {json.dumps(r, sort_keys=True) for r in rows}


def test_rows_of_another_grid_and_conflicts_are_refused(tmp_path):
    points = load_sweep(SMOKE).points()
    row = _rows(points[:1])[0]
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text(json.dumps(dict(row, length=999)) + "\n")
    with pytest.raises(SystemExit, match="is no point of"):
        _tool().restore(str(SMOKE), str(rows_file), str(tmp_path / "a"))
    rows_file.write_text(json.dumps(row) + "\n")
    _tool().restore(str(SMOKE), str(rows_file), str(tmp_path / "b"))
    rows_file.write_text(json.dumps(dict(row, final_token_acc=0.1)) + "\n")
    with pytest.raises(SystemExit, match="differs"):
        _tool().restore(str(SMOKE), str(rows_file), str(tmp_path / "b"))


def test_rows_with_list_valued_axes(tmp_path):
    """An extra axis whose values are lists (``train.betas``) matches rows as JSON gives them."""
    toml = tmp_path / "betas.toml"
    axis = '"train.betas" = [[0.8, 0.9], [0.9, 0.95]]'
    toml.write_text(SMOKE.read_text().replace("seed = [0, 1]", f"seed = [0, 1]\n{axis}"))
    points = load_sweep(toml).points()
    assert {tuple(p.to_dict()["train.betas"]) for p in points} == {(0.8, 0.9), (0.9, 0.95)}
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in _rows(points)))
    assert _tool().restore(str(toml), str(rows_file), str(tmp_path / "sweep")) == len(points)
