"""Some points of a sweep (``--only``): which points, errors, and the rows a slice leaves."""
import csv
import json

import pytest

from mimetic.cli import main
from mimetic.train.sweep import load_sweep, run_sweep
from mimetic.train.sweep.select import parse_only, select_points

from .test_sweep import write_toml

GRID = {
    "sweep": {"name": "sel"},
    "grid": {"task": ["copy"], "init": ["default", "mimetic"], "layer": ["Mamba1", "attention"],
             "d_state": [4], "length": [3, 5], "seed": [0, 1], "train": {"lr": [1e-3, 3e-3]}},
    "tasks": {"copy": {"vocab": 5}},
    "model": {"d_model": 16, "n_layer": 1, "attn_cfg": {"num_heads": 2, "rotary_emb_dim": 4}},
    "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "eval_batches": 1, "warmup_steps": 1},
}


@pytest.fixture
def cfg(tmp_path):
    return load_sweep(write_toml(tmp_path / "sel.toml", GRID))


def test_parse_only():
    assert parse_only(["layer=Mamba1", "seed=0, 1", "seed=2"]) == {"layer": ["Mamba1"], "seed": ["0", "1", "2"]}
    for bad in ("seed", "=1", "seed="):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_only([bad])


def test_select_by_grid_key_extra_axis_and_number(cfg):
    points = cfg.points()
    assert len(points) == 2 * 2 * 2 * 2 + 2 * 2 * 2   # Mamba1: init x length x seed x lr; attention: one init
    chosen = select_points(cfg, points, {"layer": ["Mamba1"], "seed": ["1"], "train.lr": ["3e-3"]})
    assert [(p.init, p.length) for p in chosen] == [("default", 3), ("default", 5), ("mimetic", 3), ("mimetic", 5)]
    assert all(p.seed == 1 and dict(p.axes)["train.lr"] == 0.003 for p in chosen)
    # Python values match by equality; "none" is d_state of attention points
    assert select_points(cfg, points, {"length": [5], "seed": [0]}) == [
        p for p in points if p.length == 5 and p.seed == 0]
    assert {p.layer for p in select_points(cfg, points, {"d_state": ["none"]})} == {"attention"}
    assert select_points(cfg, points, {"train.lr": ["0.001", "0.003"]}) == points


@pytest.mark.parametrize("only, message", [
    ({"lr": ["1e-3"]},
     r"--only lr: not an axis of this sweep \(axes: task, init, layer, d_state, length, seed, train.lr\)"),
    ({"seed": ["7"]}, r"--only seed=7: no point has it \(values: 0, 1\)"),
    ({"layer": ["attention"], "init": ["mimetic"]}, r"--only layer=attention init=mimetic: no point has all of these"),
    ({"seed": "0"}, r"--only seed: give a list of values"),
])
def test_select_errors_name_the_key(cfg, only, message):
    with pytest.raises(ValueError, match=message):
        select_points(cfg, cfg.points(), only)


def _rows(out):
    return {r["run_id"]: r for r in (json.loads(p.read_text()) | {"run_id": p.parent.name}
                                     for p in (out / "runs").glob("*/row.json"))}


def test_slices_train_only_their_points_and_give_the_rows_of_the_whole_sweep(tmp_path):
    path = write_toml(tmp_path / "sel.toml", GRID)
    whole = tmp_path / "whole"
    run_sweep(path, whole, progress=False, plot=False, device="cpu", pack="off")
    out = tmp_path / "slices"
    first = run_sweep(path, out, progress=False, plot=False, device="cpu", pack="off",
                      only={"layer": ["Mamba1"], "seed": [0]})
    assert len(first.rows) == 8 and {r["seed"] for r in first.rows} == {0}
    assert len(list((out / "runs").glob("*/row.json"))) == 8          # nothing else trained
    assert len(list((out / "runs").glob("*/metrics.jsonl"))) == 8
    second = run_sweep(path, out, progress=False, plot=False, device="cpu", pack="off",
                       only={"layer": ["attention"]})
    assert len(second.rows) == 8 and second.skipped == 0
    with (out / "results.csv").open() as f:   # the CSV holds both slices
        assert len(list(csv.DictReader(f))) == 16
    a, b = _rows(whole), _rows(out)
    assert b.keys() <= a.keys() and len(b) == 16
    for run_id, row in b.items():             # a slice's rows are the whole sweep's
        assert {k: v for k, v in row.items() if k != "elapsed_s"} == \
               {k: v for k, v in a[run_id].items() if k != "elapsed_s"}, run_id
    again = run_sweep(path, out, progress=False, plot=False, device="cpu", only={"layer": ["Mamba1"], "seed": [0]})
    assert again.skipped == 8 and again.rows == first.rows


def test_cli_only_and_dry_run(tmp_path, capsys):
    path = write_toml(tmp_path / "sel.toml", GRID)
    main(["sweep", str(path), "--dry-run", "--only", "layer=Mamba1", "--only", "seed=1", "--only", "length=5"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "4 runs"
    assert lines[0] == "task=copy init=default layer=Mamba1 d_state=4 length=5 seed=1 train.lr=0.001"
    assert main(["sweep", str(path), "--dry-run", "--only", "seed=9"]) == 2
    assert "--only seed=9: no point has it (values: 0, 1)" in capsys.readouterr().err
