"""``[sweep] best_over``: each seed's best run over tuned axes (Zoology's best learning rate)."""
import csv
import json
import math

import pytest

from mimetic.train.sweep import parse_sweep, run_sweep, summarize
from mimetic.train.sweep.best import best_rows

from .test_sweep import TINY, tiny_factory, write_toml


def row(seed, lr, acc, width=64, **extra):
    return {"task": "mqar", "init": "mimetic", "layer": "Mamba1", "d_state": 16, "length": 64, "seed": seed,
            "model.d_model": width, "train.lr": lr, "final_token_acc": acc, **extra}


def test_best_rows_keep_each_seeds_best_lr_per_other_axes():
    rows = [row(0, 1e-3, 0.2), row(0, 1e-2, 0.9), row(1, 1e-3, 0.7), row(1, 1e-2, 0.1),
            row(0, 1e-3, 0.5, width=128), row(0, 1e-2, 0.4, width=128)]
    best = best_rows(rows, ["train.lr"], "final_token_acc")
    assert [(r["seed"], r["model.d_model"], r["train.lr"], r["final_token_acc"]) for r in best] == [
        (0, 64, 1e-2, 0.9), (1, 64, 1e-3, 0.7), (0, 128, 1e-3, 0.5)]


def test_best_rows_skip_diverged_runs_and_drop_groups_with_none_left():
    rows = [row(0, 1e-3, 0.3), {**row(0, 1e-2, None), "error": "non-finite loss at step 3"},
            row(0, 1e-1, math.nan), {**row(1, 1e-2, None), "error": "non-finite loss at step 1"}]
    best = best_rows(rows, ["train.lr"], "final_token_acc")
    assert [(r["seed"], r["train.lr"]) for r in best] == [(0, 1e-3)]


def test_summary_of_best_rows_averages_over_seeds_and_lists_the_winners():
    rows = [row(0, 1e-3, 0.2), row(0, 1e-2, 0.9), row(1, 1e-3, 0.7), row(1, 1e-2, 0.1)]
    (s,) = summarize(best_rows(rows, ["train.lr"], "final_token_acc"), over=("train.lr",))
    assert s["n_seeds"] == 2 and s["final_token_acc_mean"] == pytest.approx(0.8)
    assert s["final_token_acc_std"] == pytest.approx(0.1)
    assert s["train.lr_values"] == "0.01 0.001" and "train.lr" not in s and s["model.d_model"] == 64


def with_lr(**sweep):
    data = json.loads(json.dumps(TINY))
    data["grid"].update(layer=["Mamba2"], d_state=[2], train={"lr": [1e-3, 3e-3]})
    data["sweep"].update(sweep)
    return data


def test_best_over_is_validated_against_the_extra_axes():
    assert parse_sweep(with_lr(best_over="train.lr")).best_over == ("train.lr",)
    with pytest.raises(ValueError, match=r"best_over names \['train.wd'\], which are not extra grid axes"):
        parse_sweep(with_lr(best_over=["train.wd"]))
    with pytest.raises(ValueError, match="best_over must be a list"):
        parse_sweep(with_lr(best_over=[1]))


def test_sweep_writes_the_best_summary_and_plots_from_it(tmp_path):
    path = write_toml(tmp_path / "lr.toml", with_lr(best_over=["train.lr"]))
    res = run_sweep(path, tmp_path / "out", progress=False, model_factory=tiny_factory)
    rows = list(csv.DictReader(res.csv_path.open()))
    assert len(rows) == 2 * 2 * 2 * 2  # inits x lengths x seeds x lr
    best = list(csv.DictReader((tmp_path / "out" / "summary_best.csv").open()))
    assert len(best) == 4 and all(s["n_seeds"] == "2" for s in best)  # per (init, length), over 2 seeds
    for s in best:
        winners = [max((r for r in rows if (r["init"], r["length"], r["seed"]) == (s["init"], s["length"], seed)),
                       key=lambda r: float(r["final_token_acc"])) for seed in ("0", "1")]
        assert float(s["final_token_acc_mean"]) == pytest.approx(
            sum(float(w["final_token_acc"]) for w in winners) / 2)
        assert s["train.lr_values"].split() == [w["train.lr"] for w in winners]
    # drawn from the best rows: accuracy vs length, and no plot over the tuned axis
    assert {p.name for p in res.plots} == {"copy_acc_vs_length.png"}
