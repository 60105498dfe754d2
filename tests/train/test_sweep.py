import csv
import json
from pathlib import Path

import pytest
import tomllib

from mimetic.train.sweep import load_sweep, parse_sweep, run_sweep, summarize

from .tiny import LookbackLM

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"


def tiny_factory(model_cfg, task, point):
    # Distinguish layer/init/d_state so runs differ (the sweep machinery is what is tested).
    window = 4 if point.layer == "attention" else (point.d_state or 4)
    return LookbackLM(task.vocab_size, window=window, d=model_cfg["d_model"], seed=0)


TINY = {
    "sweep": {"name": "tiny"},
    "grid": {
        "task": ["copy"],
        "init": ["default", "mimetic"],
        "layer": ["Mamba2", "attention"],
        "d_state": [2, 6],
        "length": [2, 4],
        "seed": [0, 1],
    },
    "tasks": {"copy": {"vocab": 4}},
    "model": {"d_model": 8, "n_layer": 1, "attn_cfg": {"num_heads": 2}},
    "train": {"steps": 6, "batch_size": 8, "eval_every": 3, "eval_batches": 1, "warmup_steps": 1,
              "target_acc": 0.5},
    "eval": {"lengths": [6]},
}


def write_toml(path: Path, data: dict) -> Path:
    def fmt(v):
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    lines = []

    def table(prefix, d):
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {fmt(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", data)
    path.write_text("\n".join(lines) + "\n")
    assert tomllib.loads(path.read_text()) == data
    return path


def test_smoke_toml_end_to_end_with_mambalm(tmp_path):
    out = tmp_path / "smoke"
    res = run_sweep(EXPERIMENTS / "smoke.toml", out, progress=False)
    cfg = load_sweep(EXPERIMENTS / "smoke.toml")
    n = len(cfg.points())
    assert n == 20 and len(res.rows) == n and res.skipped == 0
    rows = list(csv.DictReader(res.csv_path.open()))
    assert len(rows) == n
    for r in rows:
        assert 0.0 <= float(r["final_token_acc"]) <= 1.0
        assert int(r["steps"]) >= 1 and "gen_token_acc@16" in r
        assert r["layer"] in ("Mamba2", "attention")
    assert {p.name for p in res.plots} == {"copy_acc_vs_length.png", "copy_acc_vs_d_state.png"}
    for p in res.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    # re-running skips every finished point
    again = run_sweep(EXPERIMENTS / "smoke.toml", out, progress=False, plot=False)
    assert again.skipped == n and again.rows == res.rows


def test_sweep_resumes_and_collapses_attention(tmp_path):
    path = write_toml(tmp_path / "tiny.toml", TINY)
    cfg = load_sweep(path)
    points = cfg.points()
    # 2 init x 2 d_state x 2 length x 2 seed for Mamba2, + 2 length x 2 seed for attention
    assert len(points) == 16 + 4
    assert all(p.init == "default" and p.d_state is None for p in points if p.layer == "attention")

    out = tmp_path / "out"
    first = run_sweep(path, out, progress=False, model_factory=tiny_factory)
    assert first.skipped == 0 and len(first.rows) == 20
    # Simulate a crash that lost one point's final row: only that point runs again.
    victim = points[3]
    (out / "runs" / victim.run_id / "row.json").unlink()
    second = run_sweep(path, out, progress=False, model_factory=tiny_factory)
    assert second.skipped == 19
    assert second.rows == first.rows, "resumed point reproduces its row"

    rows = list(csv.DictReader((out / "results.csv").open()))
    keys = {"task", "init", "layer", "d_state", "length", "seed", "final_token_acc", "best_token_acc",
            "steps_to_target", "gen_token_acc@6"}
    assert keys <= set(rows[0])
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert len(summary) == 10 and all(s["n_seeds"] == "2" for s in summary)


def test_dry_run_lists_points(tmp_path):
    path = write_toml(tmp_path / "tiny.toml", TINY)
    res = run_sweep(path, tmp_path / "never", dry_run=True)
    assert len(res.rows) == 20 and not (tmp_path / "never").exists()


def test_summarize_mean_and_std():
    rows = [
        dict(task="copy", init="mimetic", layer="Mamba2", d_state=4, length=8, seed=s,
             final_token_acc=a, steps_to_target=t)
        for s, a, t in [(0, 0.5, None), (1, 1.0, 40)]
    ]
    (s,) = summarize(rows)
    assert s["final_token_acc_mean"] == pytest.approx(0.75)
    assert s["final_token_acc_std"] == pytest.approx(0.25)
    assert s["n_seeds"] == 2 and s["n_reached_target"] == 1
    assert s["steps_to_target_mean"] == 40


def mutate(**changes):
    data = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        d = data
        for p in parents:
            d = d[p]
        if value is DELETE:
            del d[last]
        else:
            d[last] = value
    return data


DELETE = object()


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(grid__seeds=[0]), r"unknown key\(s\) seeds"),
        (dict(grid__seed=DELETE), r"missing key\(s\) seed"),
        (dict(grid__layer=["Mamba3"]), "unknown layer"),
        (dict(grid__task=["copyy"]), "unknown task"),
        (dict(grid__init=["xavier"]), "unknown init"),
        (dict(grid__length=[0]), "grid.length"),
        (dict(train__stepz=3), r"\[train\]: unknown key\(s\) stepz"),
        (dict(train__seed=3), r"unknown key\(s\) seed"),
        (dict(model=DELETE), r"missing key\(s\) model"),
        (dict(optim={}), r"unknown key\(s\) optim"),
        (dict(tasks__copy__vocabulary=3), r"\[tasks.copy\]: unknown key\(s\) vocabulary"),
        (dict(tasks__copy__copy_len=3), "copy_len"),
        (dict(model__attn_cfg=DELETE), "num_heads"),
        (dict(model__vocab_size=10), r"\[model\]: unknown key\(s\) vocab_size"),
        (dict(train__steps=0), "steps=0"),
        (dict(tasks__copy__vocab=1), "vocab=1 too small"),
        (dict(eval__sizes=[3]), r"\[eval\]: unknown key\(s\) sizes"),
        (dict(grid__init=["no_tie"]), r"unknown init.*\[inits.<name>\]"),
        (dict(inits={"v": {"init": "mimetic", "cfg": {}}}), r"\[inits.v\]: unknown key\(s\) cfg"),
        (dict(inits={"v": {"init": "xavier"}}), r"\[inits.v\]: init must be one of"),
        (dict(inits={"v": {"init": "mimetic", "init_cfg": {"dt": -1.0}}}), "dt must be positive"),
    ],
)
def test_config_validation_errors_are_one_line(changes, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_sweep(mutate(**changes))
    assert "\n" not in str(e.value)


def test_named_init_variants_reach_the_model():
    from mimetic.train.sweep import build_model

    data = mutate(grid__init=["default", "no_tie"])
    data["inits"] = {"no_tie": {"init": "mimetic", "init_cfg": {"tie_bc": False}}}
    cfg = parse_sweep(data)
    point = next(p for p in cfg.points() if p.init == "no_tie")
    assert cfg.init_for(point) == ("mimetic", {"tie_bc": False})
    model_cfg = {"d_model": 16, "n_layer": 1, "ssm_cfg": {"Mamba2": {"headdim": 8}}}
    model = build_model(model_cfg, cfg.task_for(point), point, cfg.init_for(point))
    assert model.config.init == "mimetic" and model.config.init_cfg == {"tie_bc": False}
    assert model.config.ssm_cfg == {"headdim": 8, "layer": "Mamba2", "d_state": point.d_state}


@pytest.mark.parametrize("name", sorted(p.name for p in EXPERIMENTS.glob("*.toml")))
def test_shipped_experiment_files_are_valid(name):
    cfg = load_sweep(EXPERIMENTS / name)
    assert cfg.points()
