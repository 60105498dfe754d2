"""Sweeps on Ray (``run_sweep(..., ray=True)``, ``mimetic sweep --ray``) on a local CPU instance:
the rows of a local sweep, finished points skipped, a killed worker's point resumed."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from mimetic.cli import main
from mimetic.train.sweep import run_sweep
from mimetic.train.sweep.ray_runner import gpu_share

from .test_sweep import write_toml
from .tiny import LookbackLM

GRID = {
    "sweep": {"name": "ray"},
    "grid": {"task": ["copy"], "init": ["default", "mimetic"], "layer": ["Mamba2"], "d_state": [4],
             "length": [3], "seed": [0, 1]},
    "tasks": {"copy": {"vocab": 5}},
    "model": {"d_model": 16, "n_layer": 1, "ssm_cfg": {"Mamba2": {"headdim": 8}}},
    "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "eval_batches": 1, "warmup_steps": 1},
}
METRICS = ("final_token_acc", "final_loss", "best_token_acc", "best_step", "steps", "tokens", "n_params")


def _rows(out: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("runs/*/row.json"))}


def _same_rows(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for run_id in a:
        for k in METRICS:
            assert b[run_id][k] == pytest.approx(a[run_id][k], abs=1e-5), (run_id, k)


def test_gpu_share_rounds_up_to_quarters():
    assert gpu_share(16, 16) == 1.0 and gpu_share(40, 16) == 1.0
    assert gpu_share(1, 64) == 0.25 and gpu_share(5, 16) == 0.5 and gpu_share(12, 16) == 0.75


def test_ray_without_ray_installed_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    path = write_toml(tmp_path / "g.toml", GRID)
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--ray", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mimetic: error: --ray needs Ray, which is not installed: pip install 'mimetic[ray]'"


ray = pytest.importorskip("ray")


def test_ray_address_without_a_cluster_is_one_line(monkeypatch):
    from mimetic.train.sweep.ray_runner import connect

    if ray.is_initialized():
        pytest.skip("a Ray session is already open in this process")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ValueError, match=r"^--ray auto: cannot reach a Ray cluster .*ray start --head"):
        connect("auto")


def _start(gpus: int = 0) -> None:
    """A small local instance: 2 CPUs, ``gpus`` GPU resources (without CUDA behind them)."""
    ray.init(num_cpus=2, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             object_store_memory=80 * 2**20)


@pytest.fixture(scope="module")
def local_ray():
    _start()
    # Classes of this test module travel by value: Ray's workers cannot import tests/.
    for module in (__name__, LookbackLM.__module__):
        ray.cloudpickle.register_pickle_by_value(sys.modules[module])
    yield
    ray.shutdown()


def test_ray_sweep_gives_the_rows_of_a_local_sweep_and_skips_finished(tmp_path, local_ray):
    path = write_toml(tmp_path / "g.toml", GRID)
    local = run_sweep(path, tmp_path / "local", progress=False, plot=False)
    on_ray = run_sweep(path, tmp_path / "ray", progress=False, plot=False, ray=True)
    assert len(on_ray.rows) == len(local.rows) == 4
    _same_rows(_rows(tmp_path / "local"), _rows(tmp_path / "ray"))
    assert (tmp_path / "ray" / "results.csv").exists()
    lost = sorted((tmp_path / "ray" / "runs").iterdir())[1]
    (lost / "row.json").unlink()
    again = run_sweep(path, tmp_path / "ray", progress=False, plot=False, ray=True)
    assert again.skipped == 3
    _same_rows(_rows(tmp_path / "local"), _rows(tmp_path / "ray"))


class DiesOnce(LookbackLM):
    """A LookbackLM whose process exits at its ``die_at``-th training forward, once (a marker
    file remembers it): a worker killed mid-run."""

    def __init__(self, vocab_size: int, marker: str, die_at: int):
        super().__init__(vocab_size, window=4, d=8, seed=0)
        self.marker, self.die_at, self.calls = marker, die_at, 0

    def forward(self, input_ids):
        if self.training:
            self.calls += 1
            if self.calls == self.die_at and not os.path.exists(self.marker):
                Path(self.marker).write_text("died")
                os._exit(1)
        return super().forward(input_ids)


class Factory:
    def __init__(self, marker: str | None):
        self.marker = marker

    def __call__(self, model_cfg, task, point):
        return DiesOnce(task.vocab_size, self.marker or "/nonexistent/never", die_at=5 if self.marker else 0)


def test_killed_worker_restarts_from_its_checkpoint(tmp_path, local_ray):
    grid = {**GRID, "grid": {**GRID["grid"], "init": ["default"], "seed": [0]},
            "train": {**GRID["train"], "steps": 8, "eval_every": 2}}
    path = write_toml(tmp_path / "g.toml", grid)
    torch.set_num_threads(1)
    ref = run_sweep(path, tmp_path / "ref", progress=False, plot=False, model_factory=Factory(None))
    marker = tmp_path / "died"
    got = run_sweep(path, tmp_path / "ray", progress=False, plot=False, model_factory=Factory(str(marker)),
                    ray=True)
    assert marker.exists()  # the first worker did die at step 5 (after the step-4 checkpoint)
    assert got.rows[0]["steps"] == ref.rows[0]["steps"] == 8
    _same_rows(_rows(tmp_path / "ref"), _rows(tmp_path / "ray"))
    metrics = [json.loads(line)["step"] for line in (tmp_path / "ray" / "runs").glob("*/metrics.jsonl").__next__()
               .read_text().splitlines()]
    assert metrics == [2, 4, 6, 8]  # resumed at 4: no step logged twice


def test_cli_sweep_ray(tmp_path, local_ray, capsys):
    grid = {**GRID, "grid": {**GRID["grid"], "seed": [0]}}
    path = write_toml(tmp_path / "g.toml", grid)
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--ray", "--no-progress"]) == 0
    assert "2 runs (0 already done)" in capsys.readouterr().out
    assert len(_rows(tmp_path / "o")) == 2


def test_gpu_cluster_path_with_fake_gpus(tmp_path, local_ray):
    """A cluster with GPU resources (fake ones here: no CUDA behind them): capacity probed in a
    GPU task, packs as GPU-share tasks, the rows of a local sweep."""
    from mimetic.train.sweep import load_sweep
    from mimetic.train.sweep.ray_runner import plan_jobs

    path = write_toml(tmp_path / "g.toml", GRID)
    cfg = load_sweep(path)
    jobs, packed = plan_jobs(cfg, cfg.points(), tmp_path / "runs", 3, None, gpus=1.0)
    assert packed and [(len(p), share) for p, share in jobs] == [(3, 1.0), (1, 0.5)]
    ray.shutdown()
    _start(gpus=1)
    try:
        jobs, _ = plan_jobs(cfg, cfg.points(), tmp_path / "runs", "auto", None, gpus=1.0)
        assert [(len(p), share) for p, share in jobs] == [(4, 0.25)]  # CPU capacity 16 -> a quarter GPU
        local = run_sweep(path, tmp_path / "local", progress=False, plot=False)
        on_ray = run_sweep(path, tmp_path / "ray", progress=False, plot=False, ray=True)
        assert len(on_ray.rows) == len(local.rows)
        _same_rows(_rows(tmp_path / "local"), _rows(tmp_path / "ray"))
    finally:
        ray.shutdown()
        _start()  # as the other tests expect


def test_retried_pack_with_members_at_two_steps(tmp_path, local_ray):
    """A pack's worker that died while saving leaves members at different checkpoint steps;
    the retried task trains each step's members as its own ensemble, rows as a local sweep's."""
    import dataclasses

    from mimetic.train.sweep import load_sweep, run_point
    from mimetic.train.sweep.ray_runner import _job

    path = write_toml(tmp_path / "g.toml", GRID)
    local = run_sweep(path, tmp_path / "local", progress=False, plot=False)
    cfg = load_sweep(path)
    points, runs = cfg.points()[:2], tmp_path / "ray" / "runs"
    early = dataclasses.replace(cfg, train={**cfg.train, "interrupt_after": 3})
    run_point(early, points[0], runs / points[0].run_id)  # stopped at step 3, as if preempted
    (runs / points[0].run_id / "row.json").unlink()
    rows, _ = _job(cfg, points, str(runs), True, None, 1)
    assert [r["steps"] for r in rows] == [6, 6]
    want = _rows(tmp_path / "local")
    assert len(local.rows) == 4
    for p, row in zip(points, rows):
        for k in METRICS:
            assert row[k] == pytest.approx(want[p.run_id][k], abs=1e-5), (p.run_id, k)
