"""Packed sweeps (points of one shape trained as ensembles) give the rows one-at-a-time runs give."""
import csv
import json
import types

import pytest

from mimetic.train.sweep import load_sweep, run_sweep
from mimetic.train.sweep import packed as packed_module
from mimetic.train.sweep.packed import cpu_pack_capacity, group_key, pack_capacity, pack_points

from .test_sweep import write_toml

GRID = {
    "sweep": {"name": "packed"},
    "grid": {
        "task": ["copy"],
        "init": ["default", "mimetic", "no_tie"],
        "layer": ["Mamba1", "Mamba2", "attention"],
        "d_state": [4],
        "length": [3, 5],
        "seed": [0, 1],
        "train": {"lr": [2e-3, 5e-3]},
    },
    "inits": {"no_tie": {"init": "mimetic", "init_cfg": {"tie_bc": False}}},
    "tasks": {"copy": {"vocab": 5}},
    "model": {"d_model": 16, "n_layer": 2, "ssm_cfg": {"Mamba2": {"headdim": 8}},
              "attn_cfg": {"num_heads": 2, "rotary_emb_dim": 4}},
    "train": {"steps": 12, "batch_size": 8, "eval_every": 4, "eval_batches": 1, "warmup_steps": 2,
              "target_acc": 0.6},
    "eval": {"lengths": [7], "batches": 1},
}
METRICS = ("final_token_acc", "final_loss", "best_token_acc", "best_step", "steps", "steps_to_target",
           "n_params", "tokens", "gen_token_acc@7")


def _rows(path):
    return {r["run_id"]: r for r in (json.loads(p.read_text()) | {"run_id": p.parent.name}
                                     for p in sorted(path.glob("runs/*/row.json")))}


def test_packs_group_by_shape_and_split_by_capacity(tmp_path):
    cfg = load_sweep(write_toml(tmp_path / "g.toml", GRID))
    points = cfg.points()
    packs = pack_points(cfg, points, tmp_path / "runs", capacity=100)
    # one pack per (layer, length): seeds, inits and lr differ inside a pack
    assert len(packs) == 3 * 2
    assert sorted(len(p) for p in packs) == [4, 4, 12, 12, 12, 12]
    for pack in packs:
        assert len({group_key(cfg, p, tmp_path / "runs" / p.run_id) for p in pack}) == 1
        assert len({(p.layer, p.length) for p in pack}) == 1
    small = pack_points(cfg, points, tmp_path / "runs", capacity=5)
    assert max(len(p) for p in small) == 5 and sum(len(p) for p in small) == len(points)


def test_packed_sweep_gives_the_rows_of_one_at_a_time(tmp_path):
    path = write_toml(tmp_path / "g.toml", GRID)
    lone = run_sweep(path, tmp_path / "off", progress=False, plot=False, pack="off")
    packed = run_sweep(path, tmp_path / "auto", progress=False, plot=False, pack=5)
    assert len(lone.rows) == len(packed.rows) == len(load_sweep(path).points())
    a, b = _rows(tmp_path / "off"), _rows(tmp_path / "auto")
    assert a.keys() == b.keys()
    for run_id in a:
        for k in METRICS:
            if isinstance(a[run_id][k], float):
                assert b[run_id][k] == pytest.approx(a[run_id][k], abs=1e-5), (run_id, k)
            else:
                assert b[run_id][k] == a[run_id][k], (run_id, k)
    # the same files in every run folder: metrics, result, checkpoints
    for run in (tmp_path / "auto" / "runs").iterdir():
        assert {"metrics.jsonl", "result.json", "row.json", "checkpoints"} <= {p.name for p in run.iterdir()}
    csv_rows = list(csv.DictReader((tmp_path / "auto" / "results.csv").open()))
    assert {"train.lr", "final_token_acc", "gen_token_acc@7"} <= set(csv_rows[0])


def test_packed_sweep_resumes_a_lost_point(tmp_path):
    path = write_toml(tmp_path / "g.toml", GRID)
    first = run_sweep(path, tmp_path / "out", progress=False, plot=False)
    victim = sorted((tmp_path / "out" / "runs").iterdir())[3]
    (victim / "row.json").unlink()
    second = run_sweep(path, tmp_path / "out", progress=False, plot=False)
    assert second.skipped == len(first.rows) - 1
    assert second.rows == first.rows


def test_unfoldable_models_run_one_at_a_time(tmp_path):
    data = json.loads(json.dumps(GRID))
    data["grid"] |= {"layer": ["Mamba2"], "init": ["default"], "length": [3], "train": {"lr": [2e-3]}}
    data["model"]["d_intermediate"] = 8  # MLP blocks: EnsembleLM cannot fold them
    path = write_toml(tmp_path / "mlp.toml", data)
    res = run_sweep(path, tmp_path / "out", progress=False, plot=False)
    assert len(res.rows) == 2 and all(r["final_token_acc"] is not None for r in res.rows)


@pytest.mark.parametrize("pack", [0, -2, "many", True])
def test_bad_pack_argument(tmp_path, pack):
    path = write_toml(tmp_path / "g.toml", GRID)
    with pytest.raises(ValueError, match="pack must be"):
        run_sweep(path, tmp_path / "out", progress=False, plot=False, pack=pack)


def test_stream_lease_refuses_more_threads_than_torch_has_pool_streams():
    """More worker threads than the stream pool holds would share streams (and captures)."""
    from mimetic.train.sweep.packed import STREAM_POOL, StreamLease

    with pytest.raises(ValueError, match="at most 32 worker threads"):
        StreamLease(STREAM_POOL + 1)


def test_cpu_pack_size_is_the_fastest_per_member_measured(monkeypatch):
    """cpu_pack_capacity doubles the pack while a step gets cheaper per member and stops at
    the first size that is not; it never builds a pack above ``most``. The fake steps advance
    a fake clock by k x a per-member cost that falls to k = 4 and rises after (no real
    timing, so no jitter)."""
    per_member_ms = {1: 20, 2: 10, 4: 7.5, 8: 15, 16: 1}
    clock = [0.0]
    monkeypatch.setattr(packed_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    built = []

    def make_step(k):
        built.append(k)

        def step():
            clock[0] += k * per_member_ms[k] / 1000
        return step

    assert cpu_pack_capacity(make_step, most=16) == 4
    assert built == [1, 2, 4, 8]          # 16 is never tried: 8 was slower than 4
    built.clear()
    assert cpu_pack_capacity(make_step, most=3) == 2
    assert built == [1, 2]


def test_cpu_pack_capacity_of_a_grid_point_stays_within_the_group(tmp_path):
    """The real probe (one step of 1, 2, ... member packs of the point's model) on the CPU
    returns a size between 1 and ``most``."""
    cfg = load_sweep(write_toml(tmp_path / "g.toml", GRID))
    point = cfg.points()[0]
    assert 1 <= pack_capacity(cfg, point, "cpu", most=3) <= 3


def test_pack_capacity_of_a_group_of_one_builds_nothing(tmp_path, monkeypatch):
    """A group of one member is a pack of one: no model is built and no step probed."""
    cfg = load_sweep(write_toml(tmp_path / "g.toml", GRID))
    monkeypatch.setattr("mimetic.train.sweep.packed.MambaLM", None)   # calling it would fail
    assert pack_capacity(cfg, cfg.points()[0], "cpu", most=1) == 1
