"""history.csv and the accuracy-vs-steps plot: every evaluation of every run of a sweep,
finished or cut off, and ``--report``, which writes them without training."""
import csv
import json

from mimetic.cli import main
from mimetic.train.metrics import read_metrics
from mimetic.train.sweep import load_sweep, run_sweep
from mimetic.train.sweep.history import collect_history
from mimetic.train.sweep.plots import MAX_HISTORY_PANELS, plot_history

from .test_sweep import TINY, tiny_factory, write_toml

PNG = b"\x89PNG\r\n\x1a\n"
#: TINY with three evaluations a run (steps 3, 6, 9): enough for a curve
CURVES = {**TINY, "train": {**TINY["train"], "steps": 9}}


def read_csv(path):
    return list(csv.DictReader(path.open()))


def test_history_holds_every_evaluation_of_every_run(tmp_path):
    path = write_toml(tmp_path / "tiny.toml", CURVES)
    out = tmp_path / "out"
    res = run_sweep(path, out, progress=False, model_factory=tiny_factory)
    points = load_sweep(path).points()
    history = read_csv(res.history_path)
    assert res.history_path == out / "history.csv"
    by_run = {}
    for rec in history:
        by_run.setdefault(rec["run"], []).append(rec)
    assert set(by_run) == {p.run_id for p in points}
    for p in points:
        evals = read_metrics(out / "runs" / p.run_id)
        recs = by_run[p.run_id]
        assert [int(r["step"]) for r in recs] == [e["step"] for e in evals] and len(recs) >= 2
        assert [float(r["token_acc"]) for r in recs] == [e["token_acc"] for e in evals]
        assert all((r["layer"], r["init"], int(r["seed"])) == (p.layer, p.init, p.seed) for r in recs)
    # the last evaluation is the row's final accuracy
    for row in res.rows:
        run = next(p.run_id for p in points if p.to_dict().items() <= row.items())
        assert float(by_run[run][-1]["token_acc"]) == row["final_token_acc"]
    steps_plot = out / "plots" / "copy_acc_vs_steps.png"
    assert steps_plot in res.plots and steps_plot.read_bytes()[:8] == PNG


def test_report_trains_nothing_and_keeps_the_history_of_unfinished_runs(tmp_path, capsys):
    path = write_toml(tmp_path / "tiny.toml", CURVES)
    out = tmp_path / "out"
    run_sweep(path, out, progress=False, model_factory=tiny_factory)
    cut = load_sweep(path).points()[2]
    run_dir = out / "runs" / cut.run_id
    (run_dir / "row.json").unlink()   # as a sweep killed before this point's row was written
    (run_dir / "result.json").unlink()
    (out / "history.csv").unlink()
    metrics_before = (run_dir / "metrics.jsonl").read_text()
    capsys.readouterr()   # the first sweep's lines

    assert main(["sweep", str(path), "--out", str(out), "--report", "--no-progress"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "error" not in captured.err and "run 1/" not in captured.err
    assert "history.csv" in printed and "copy_acc_vs_steps.png" in printed
    assert not (run_dir / "row.json").exists(), "--report must not train"
    assert (run_dir / "metrics.jsonl").read_text() == metrics_before
    rows = read_csv(out / "results.csv")
    assert len(rows) == len(load_sweep(path).points()) - 1
    history = read_csv(out / "history.csv")
    assert any(r["run"] == cut.run_id for r in history), "an unfinished run keeps its history"


def test_history_skips_an_unreadable_log_with_a_warning(tmp_path, recwarn):
    path = write_toml(tmp_path / "tiny.toml", TINY)
    out = tmp_path / "out"
    run_sweep(path, out, progress=False, model_factory=tiny_factory, plot=False)
    points = load_sweep(path).points()
    bad = out / "runs" / points[0].run_id / "metrics.jsonl"
    bad.write_text("not json\n" + json.dumps({"step": 3, "token_acc": 0.5}) + "\n")
    records = collect_history(points, out / "runs")
    assert {r["run"] for r in records} == {p.run_id for p in points[1:]}
    assert any("left out of history.csv" in str(w.message) for w in recwarn)


def test_plot_history_leaves_large_grids_to_the_csv(tmp_path):
    def rec(layer, length, seed, step, acc):
        return {"run": f"{layer}-{length}-{seed}", "task": "copy", "init": "mimetic", "layer": layer,
                "d_state": 16, "length": length, "seed": seed, "step": step, "token_acc": acc}

    small = [rec("Mamba1", 32, s, t, 0.1 * t + 0.01 * s) for s in range(3) for t in (1, 2, 3)]
    assert [p.name for p in plot_history(small, tmp_path)] == ["copy_acc_vs_steps.png"]
    large = [rec("Mamba1", 8 * n, 0, t, 0.5) for n in range(1, MAX_HISTORY_PANELS + 2) for t in (1, 2, 3)]
    assert plot_history(large, tmp_path / "large") == []
    two_evals = [r for r in small if r["step"] < 3]   # two points a run: no curve
    assert plot_history(two_evals, tmp_path / "short") == []
