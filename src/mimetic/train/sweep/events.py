"""A sweep's progress as plain lines on stderr, for logs: where no progress bar is drawn
(``progress=False``, ``--no-progress``, stderr a file or a pipe), one line per event, so that
a log cut off by a time limit still says what ran, what was in flight and how long packs took.

    sweep copy_seeds [    0.4 s] start: 440 points, 120 done, 320 to run as 16 packs, 3 at once (threads on one GPU)
    sweep copy_seeds [    0.4 s] pack 1/16 start: copy-*-Mamba2-d16-L32-* x20, 1500 steps
    sweep copy_seeds [   30.4 s] pack 1/16 at step 1000 of 1500: 33.3 steps/s, 666 model-steps/s
    sweep copy_seeds [   41.6 s] pack 1/16 done in 41.2 s: 728 model-steps/s, mean final_token_acc 0.873
    sweep copy_seeds [  555.0 s] done: 320 runs in 16 packs, 440 of 440 points have rows; mean final_token_acc 0.712

(numbers made up). A job that started and has no ``done`` line was in flight when the log ends;
its last ``at step`` line (at most one per :data:`PROGRESS_EVERY_S`, when a newer checkpoint
is on disk) says how far it got and how fast it went, so a cut-off call still measures a rate.
``t0`` is wall-clock time, so lines written by worker processes (which print their own
pack's start and end) share the sweep's clock. Each line is one ``write`` under a lock:
threads of one process never interleave within a line; processes write lines shorter than
a pipe's atomic size.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from .config import GridPoint, SweepConfig
from .packed import _resume_step

_WRITE = threading.Lock()

#: Seconds between a job's ``at step`` lines.
PROGRESS_EVERY_S = 60.0

Rows = list[dict[str, Any]]


def job_label(points: list[GridPoint]) -> str:
    """The run id the points share, ``*`` where they differ, and ``x<n>`` for several:
    ``copy-*-Mamba1-d16-L32-* x20`` (inits and seeds differ)."""
    parts = [p.run_id_parts for p in points]
    if len({len(x) for x in parts}) > 1:  # extra axes that apply to some members only
        return f"{points[0].run_id} +{len(points) - 1}"
    shared = "-".join(vals[0] if len(set(vals)) == 1 else "*" for vals in zip(*parts))
    return shared + (f" x{len(points)}" if len(points) > 1 else "")


def rows_summary(rows: Rows, metric: str) -> str:
    """``mean final_token_acc 0.873`` (the sweep's ``metric``, and how many errors), or the
    error of a lone failed run."""
    values = [r[metric] for r in rows if isinstance(r.get(metric), (int, float))]
    errors = [r["error"] for r in rows if r.get("error")]
    text = f"mean {metric} {sum(values) / len(values):.3f}" if values else f"no {metric}"
    if errors:
        first = " ".join(str(errors[0]).split())
        text += f", {len(errors)} error(s) ({first[:160]})"
    return text


def model_steps(rows: Rows, start: int | str) -> int:
    """Steps trained in this call, summed over a job's rows (``start``: where the job's runs
    stood before it, as ``packed._resume_step`` says; "done" = nothing left to train)."""
    if start == "done":
        return 0
    return sum(max(0, r["steps"] - start) for r in rows if isinstance(r.get("steps"), int))


@dataclass(frozen=True)
class SweepLog:
    """Writes a sweep's event lines when ``enabled``; picklable, so worker processes get it.
    ``metric``: the result column whose mean a finished job's line shows (the sweep's)."""

    name: str
    enabled: bool
    metric: str
    t0: float = field(default_factory=time.time)
    progress_every: float = PROGRESS_EVERY_S

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"sweep {self.name} [{time.time() - self.t0:7.1f} s] {message}\n"
        with _WRITE:
            sys.stderr.write(line)
            sys.stderr.flush()

    def job(self, cfg: SweepConfig, points: list[GridPoint], runs: Path, index: int, total: int,
            packed: bool, train: Callable[[], Rows]) -> Rows:
        """``train()`` (the job of ``points``, the ``index``-th of ``total``) between its start
        and finish lines."""
        if not self.enabled:
            return train()
        start = _resume_step(runs / points[0].run_id)  # a pack's members all stand at one step
        steps = TrainConfig(**cfg.train_for(points[0])).steps
        what = f"{'pack' if packed else 'run'} {index}/{total}"
        at = " (done, collecting its rows)" if start == "done" else (f" from step {start}" if start else "")
        self(f"{what} start: {job_label(points)}, {steps} steps{at}")
        began = time.perf_counter()
        stop = threading.Event()
        watcher = None
        if start != "done":  # else nothing trains
            watcher = threading.Thread(target=self._progress, daemon=True, name="mimetic-sweep-progress",
                                       args=(what, runs / points[0].run_id, start, steps, len(points), began, stop))
            watcher.start()
        try:
            rows = train()
        finally:
            stop.set()
            if watcher is not None:
                watcher.join()
        self.finished(what, rows, start, time.perf_counter() - began)
        return rows

    def _progress(self, what: str, run_dir: Path, start: int, steps: int, members: int,
                  began: float, stop: threading.Event) -> None:
        """Until ``stop``: every ``progress_every`` seconds, the job's newest checkpoint step on
        disk (its members all stand at one step) and its rate since it started, when newer."""
        last = start
        while not stop.wait(self.progress_every):
            step = _resume_step(run_dir)
            if isinstance(step, int) and step > last:
                rate = (step - start) / max(time.perf_counter() - began, 1e-9)
                self(f"{what} at step {step} of {steps}: {rate:.1f} steps/s, {rate * members:.0f} model-steps/s")
                last = step

    def finished(self, what: str, rows: Rows, start: int | str, seconds: float) -> None:
        """The line of a finished job: seconds, model-steps a second, the rows' mean metric."""
        rate = model_steps(rows, start) / max(seconds, 1e-9)
        self(f"{what} done in {seconds:.1f} s: {rate:.0f} model-steps/s, {rows_summary(rows, self.metric)}")
