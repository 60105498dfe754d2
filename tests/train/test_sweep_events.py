"""A sweep without progress bars writes one plain line per event to stderr (sweep/events.py)."""
import io
import json
import re

from mimetic.cli import main
from mimetic.train.sweep import load_sweep, parse_sweep, run_sweep
from mimetic.train.sweep.events import job_label, rows_summary
from mimetic.train.sweep.packed import by_cost

from .test_sweep import TINY, tiny_factory, write_toml

PACKED = {
    "sweep": {"name": "ev"},
    "grid": {"task": ["copy"], "init": ["default", "mimetic"], "layer": ["Mamba1"], "d_state": [4],
             "length": [3, 5], "seed": [0, 1]},
    "tasks": {"copy": {"vocab": 5}},
    "model": {"d_model": 16, "n_layer": 1},
    "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "eval_batches": 1, "warmup_steps": 1},
}
LINE = re.compile(r"^sweep (\w+) \[ *\d+\.\d s\] (.*)$")


def _events(err: str, name: str) -> list[str]:
    """The messages of the sweep's lines in ``err``; every line of it must be one."""
    lines = err.splitlines()
    matched = [LINE.match(line) for line in lines]
    assert all(m and m.group(1) == name for m in matched), err
    return [m.group(2) for m in matched]


def test_packed_sweep_lines_start_each_pack_and_end(tmp_path, capsys):
    path = write_toml(tmp_path / "ev.toml", PACKED)
    run_sweep(path, tmp_path / "out", progress=False, plot=False, device="cpu")
    events = _events(capsys.readouterr().err, "ev")
    assert events[0] == "start: 8 points, 0 done, 8 to run as 2 packs, one at a time"
    # the shorter copy length is the cheaper pack: it starts first
    assert events[1] == "pack 1/2 start: copy-*-Mamba1-d4-L3-* x4, 4 steps"
    assert re.fullmatch(r"pack 1/2 done in \d+\.\d s: \d+ model-steps/s, mean final_token_acc 0\.\d{3}", events[2])
    assert events[3] == "pack 2/2 start: copy-*-Mamba1-d4-L5-* x4, 4 steps"
    assert events[4].startswith("pack 2/2 done in ")
    assert re.fullmatch(r"done: 8 runs in 2 packs, 8 of 8 points have rows; mean final_token_acc 0\.\d{3}",
                        events[5])
    assert len(events) == 6

    run_sweep(path, tmp_path / "out", progress=False, plot=False, device="cpu")  # all finished: one line
    assert _events(capsys.readouterr().err, "ev") == ["start: 8 points, 8 done, 0 to run"]


def test_one_point_jobs_run_cheapest_first_and_say_so(tmp_path, capsys):
    path = write_toml(tmp_path / "tiny.toml", TINY)
    cfg = load_sweep(path)
    out = tmp_path / "out"
    expected = by_cost(cfg, cfg.points(), out / "runs")
    run_sweep(path, out, progress=False, plot=False, model_factory=tiny_factory)
    events = _events(capsys.readouterr().err, "tiny")
    assert events[0] == "start: 20 points, 0 done, 20 to run as 20 runs, one at a time"
    starts = [e for e in events if " start: " in e and e.startswith("run ")]
    assert starts == [f"run {i + 1}/20 start: {p.run_id}, 6 steps" for i, p in enumerate(expected)]
    assert sum(e.startswith("run ") and " done in " in e for e in events) == 20
    assert events[-1].startswith("done: 20 runs, 20 of 20 points have rows; mean final_token_acc ")


def test_resumed_job_says_where_it_starts(tmp_path, capsys):
    path = write_toml(tmp_path / "tiny.toml", TINY)
    out = tmp_path / "out"
    run_sweep(path, out, progress=False, plot=False, model_factory=tiny_factory)
    victim = load_sweep(path).points()[0]
    (out / "runs" / victim.run_id / "row.json").unlink()  # trained, its row lost
    capsys.readouterr()
    run_sweep(path, out, progress=False, plot=False, model_factory=tiny_factory)
    events = _events(capsys.readouterr().err, "tiny")
    assert events[1] == f"run 1/1 start: {victim.run_id}, 6 steps (done, collecting its rows)"
    assert re.fullmatch(r"run 1/1 done in \d+\.\d s: 0 model-steps/s, mean final_token_acc 0\.\d{3}", events[2])


def test_no_lines_where_the_bar_is_drawn(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    path = write_toml(tmp_path / "tiny.toml", TINY)
    run_sweep(path, tmp_path / "out", progress=True, plot=False, model_factory=tiny_factory)
    drawn = term.getvalue()
    assert "sweep tiny:" in drawn  # the bar, drawn ...
    assert not re.search(r"^sweep tiny \[", drawn, re.M)  # ... instead of the lines


def test_cli_no_progress_logs_worker_processes_lines(tmp_path, capfd):
    data = json.loads(json.dumps(PACKED))
    data["grid"] |= {"init": ["default"], "length": [3]}  # 2 points
    path = write_toml(tmp_path / "ev.toml", data)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--workers", "2", "--pack", "off",
                 "--device", "cpu", "--no-progress"]) == 0
    out, err = capfd.readouterr()
    events = _events(err, "ev")
    assert events[0] == "start: 2 points, 0 done, 2 to run as 2 runs, 2 at once (processes)"
    # each worker process writes its own job's lines
    assert sorted(e.split(" start: ")[0] for e in events if " start: " in e) == ["run 1/2", "run 2/2"]
    assert sum(" done in " in e for e in events) == 2 and events[-1].startswith("done: 2 runs, 2 of 2 points")
    assert "2 runs (0 already done)" in out


def test_job_label_and_rows_summary():
    cfg = parse_sweep(PACKED)
    points = cfg.points()
    assert job_label(points[:1]) == points[0].run_id
    assert job_label(points) == "copy-*-Mamba1-d4-*-* x8"
    rows = [{"final_token_acc": 0.5}, {"final_token_acc": 0.75}, {"error": "loss is nan at step 3\n(lr too high)"}]
    error = "1 error(s) (loss is nan at step 3 (lr too high))"
    assert rows_summary(rows, "final_token_acc") == f"mean final_token_acc 0.625, {error}"
    assert rows_summary(rows[2:], "final_token_acc") == f"no final_token_acc, {error}"
    assert rows_summary(rows[:1], "best_token_acc") == "no best_token_acc"   # the sweep's own metric



def test_a_long_job_says_how_far_it_got(tmp_path, monkeypatch):
    """While a job trains, an ``at step`` line each ``progress_every`` seconds where a newer
    checkpoint is on disk: the step and the rate so far (a log cut off mid-pack still says
    how fast it went); one line per step reached, none after the job's end line."""
    import time

    from mimetic.train.checkpoint import checkpoint_root
    from mimetic.train.sweep.events import SweepLog

    lines: list[str] = []
    monkeypatch.setattr(SweepLog, "__call__", lambda self, message: lines.append(message))
    path = write_toml(tmp_path / "ev.toml", {**PACKED, "train": {**PACKED["train"], "steps": 30}})
    cfg = load_sweep(path)
    points = [p for p in cfg.points() if p.length == 3]
    runs = tmp_path / "runs"

    def train():  # stands in for a pack: saves its checkpoints, slower than the log's period
        for step in (10, 20):
            (checkpoint_root(runs / points[0].run_id) / f"step_{step}").mkdir(parents=True)
            deadline = time.monotonic() + 10
            while not any(f"at step {step} " in m for m in lines) and time.monotonic() < deadline:
                time.sleep(0.01)
        return []

    SweepLog("ev", enabled=True, metric=cfg.metric, progress_every=0.02).job(cfg, points, runs, 1, 2, True, train)
    assert lines[0] == "pack 1/2 start: copy-*-Mamba1-d4-L3-* x4, 30 steps"
    progress = lines[1:-1]
    assert [m.split(":")[0] for m in progress] == ["pack 1/2 at step 10 of 30", "pack 1/2 at step 20 of 30"]
    assert all(re.fullmatch(r"pack 1/2 at step \d+ of 30: \d+\.\d steps/s, \d+ model-steps/s", m) for m in progress)
    assert lines[-1].startswith("pack 1/2 done in ")
