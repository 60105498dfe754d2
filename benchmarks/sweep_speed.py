"""Where the time of a sweep goes: one training step taken apart, and the sweep runner's throughput.

Two models, both d_state 16 and taken from the experiment files (model, task and train tables):

* "quick": ``experiments/copy_quick.toml`` at copy_len 64 (2 layers, d_model 64, Mamba-2
  headdim 16, copy vocab 26, batch 64, lr 2e-3) -- Mamba1, Mamba2 and attention;
* "wide": ``experiments/copy_length.toml`` at copy_len 256 (2 layers, d_model 256, Mamba-2
  headdim 64, attention 4 heads with rotary 64, batch 64) -- Mamba1 and Mamba2.

Sections (``--sections``; all but ``mqar`` by default):

anatomy
    The body of ``mimetic.train.train``'s loop, rebuilt from the loop's own functions
    (``batch_for_step``, ``lr_at``, ``model_logits`` under bf16 autocast on CUDA,
    ``masked_loss_and_acc``, ``build_optimizer``, ``clip_grad_norm_``) with a
    ``perf_counter`` mark after each phase: batch generation on the CPU, H2D copy (+ setting
    the lr), forward, loss (``masked_loss_and_acc``, whose boolean-mask indexing waits for
    the GPU), ``loss.item()`` + finiteness check, zero_grad + backward, gradient clipping,
    the gradient-norm finiteness check, optimizer step, ``acc.item()`` (the progress bar's).
    Each step ends in a sync, so a step's marks add up to its wall time. Two views: "loop"
    runs the steps exactly as the loop does (a phase is its host time; the waits for the
    GPU land in the sync phases and the loss), "synced" adds
    ``torch.cuda.synchronize()`` before every mark (a phase is its host time plus its GPU
    work). Wall ms/step is the median over the timed steps (also: the synchronized block
    divided by its steps, and the mean ms/step that ``train()`` itself reports over a short
    run). On CUDA, a window of steps under ``torch.profiler`` gives the GPU kernel time and
    the number of kernels per step (CUDA events' self device time, memcpy/memset counted
    apart) and the heaviest kernels. One evaluation and one checkpoint save are timed and
    spread over the toml's ``eval_every`` steps (the loop saves at every evaluation).

runner
    ``mimetic.train.sweep.run_sweep(toml, out, workers=W, progress=False, plot=False)``
    (with ``pack="off"`` where ``run_sweep`` takes ``pack``: one run per process at a time)
    on a generated sweep file (the copy_quick grid: Mamba1/Mamba2/attention x
    default/mimetic x copy_len 32/64/128, 15 points, seeds added until there are at least
    max(W) points; fewer steps, 1 eval batch, no [eval] lengths, no early stop) for each W
    of ``--workers``. Model-steps/s = steps trained (results' ``steps``) / wall time of the
    call, process start-up included; per-run steps/s = steps / ``elapsed_s`` (training
    only); train fraction = training seconds / (wall x jobs at once), a pack's seconds
    counted once. Then a W = 1 sweep of the same grid under ``torch.profiler`` (CUDA
    activity): total kernel time / wall time. Then a sample of the copy_length grid
    (Mamba1/Mamba2 x d_state 16/128 x copy_len 128/512, seeds added up to the best W) with
    the best W, whose steady per-step times (the last eval window of each run's
    metrics.jsonl) are interpolated over copy_len and d_state (clamped outside the sampled
    range) and summed over the full grid: estimated GPU-hours for its runs x its steps and
    for 360 runs. Approximate: attention points are priced as the mean of the two SSMs,
    every run goes the full budget (early stop would shorten it), concurrency is that of
    the sample, and the start-up, eval and checkpoint time outside the training steps is
    left out.

packed
    The same measurements through ``run_sweep(..., pack="auto")`` (``measure_packed``): the
    copy_quick file with W = 1 and the runner's best W, the profiled W = 1 sweep (kernels
    run in this process there, so the profiler sees them all), and the copy_length sample,
    this time with the file's two inits and three seeds so that its packs (one per layer x
    d_state x copy_len) hold the members the full grid's do; the estimate divides a pack's
    step time over its members. Reported as not available when ``run_sweep`` has no
    ``pack`` parameter.

mqar
    The same steady step for one MQAR pack as the runner packs the slice left to run
    (``mqar_zoology_small.toml`` at seq_len 512, d_model 64, 12 members; Mamba1 and Mamba2):
    where its time goes (it trains at a few steps a second, GPU-bound).

scaling
    Pack size K (1, 4, 16, 64) against the steady cost of a step (``scaling_one``): one
    ``train_ensemble`` of K seeds of the quick models at copy_len 128 and the wide ones at
    copy_len 256, a short and a long run, the difference per extra step (so compilation,
    capture and the final eval drop out); on CUDA the same difference of kernel time gives
    the kernel fraction of a steady step (GPU kernel time / wall time).

Each measurement is wrapped: a failure is recorded (with its traceback's tail) and the rest
goes on; measurements not yet started when ``--budget-s`` seconds have passed are skipped.

Usage (on the device, mimetic importable):
    python benchmarks/sweep_speed.py --out DIR [--smoke] [--sections anatomy,runner,packed]
        [--workers 1,4,8] [--budget-s 360]
``--smoke``: tiny sizes and step counts (copy_len 16, batch 8; sweep grids at copy_len 8/16),
for a check of the script on the CPU in under two minutes. The device is CUDA if available
(also with ``--smoke``), else the CPU (no profiler numbers there). Prints a JSON line per
measurement and markdown tables last; writes every number to DIR/sweep_speed.json,
rewritten after each measurement so that a run cut short keeps what it finished.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import inspect
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomllib
import torch

from harness import device_time_totals, env_info, sync
from mimetic.tasks import evaluate, model_logits
from mimetic.train import TrainConfig, batch_for_step, build_optimizer, lr_at, read_metrics, train
from mimetic.train.checkpoint import rng_state, save_checkpoint
from mimetic.train.loop import masked_loss_and_acc
from mimetic.train.sweep import GridPoint, build_model, load_sweep, parse_sweep, run_sweep
from mimetic.train.sweep.select import select_points

REPO = Path(__file__).resolve().parents[1]
COPY_QUICK = REPO / "experiments" / "copy_quick.toml"
COPY_LENGTH = REPO / "experiments" / "copy_length.toml"
MQAR_SMALL = REPO / "experiments" / "mqar_zoology_small.toml"
SECTIONS = ("anatomy", "runner", "packed", "scaling", "mqar")
DEFAULT_SECTIONS = SECTIONS[:4]  # mqar on request
PHASES = ("batch", "h2d", "forward", "loss", "sync_loss", "backward", "clip", "sync_gnorm", "optimizer", "sync_acc")
#: The run count of copy_length.toml's grid before attention collapses over init and d_state.
GRID_PRODUCT_RUNS = 360


@dataclass(frozen=True)
class Sizes:
    """Step counts and lengths of one invocation (full or ``--smoke``)."""

    warmup: int  # untimed steps before the anatomy's timed ones
    wall_steps: int  # timed steps, loop view
    synced_steps: int  # timed steps, synced view
    profile_steps: int  # steps under the profiler
    train_steps: int  # steps of the train() cross-check
    quick_len: int  # copy_len of the quick model's anatomy
    wide_len: int  # copy_len of the wide model's anatomy
    batch: int | None  # batch size override (None: the toml's)
    runner_steps: int  # steps per run of the runner's copy_quick sweeps
    profile_sweep_steps: int  # steps per run of the profiled sweep
    grid_lengths: tuple[int, ...]  # copy_len axis of the runner's copy_quick grid
    sample_steps: int  # steps per run of the copy_length sample
    sample_lengths: tuple[int, ...]
    sample_d_states: tuple[int, ...]
    scaling_packs: tuple[int, ...]  # pack sizes K of the scaling section
    scaling_steps: tuple[int, int]  # (short, long) run lengths whose difference is timed
    scaling_quick_len: int  # copy_len of the quick models in the scaling section
    mqar_only: tuple[tuple[str, tuple[str, ...]], ...]  # the mqar section's points (--only)
    mqar_pack: int  # members of the mqar section's pack
    mqar_steps: tuple[int, int]  # (short, long) run lengths of the mqar section


FULL = Sizes(warmup=10, wall_steps=50, synced_steps=30, profile_steps=10, train_steps=60,
             quick_len=64, wide_len=256, batch=None, runner_steps=150, profile_sweep_steps=16,
             grid_lengths=(32, 64, 128), sample_steps=60, sample_lengths=(128, 512),
             sample_d_states=(16, 128), scaling_packs=(1, 4, 16, 64), scaling_steps=(30, 130),
             scaling_quick_len=128, mqar_only=(("length", ("512",)), ("model.d_model", ("64",))), mqar_pack=12,
             mqar_steps=(10, 40))
SMOKE = Sizes(warmup=2, wall_steps=6, synced_steps=3, profile_steps=2, train_steps=4,
              quick_len=16, wide_len=16, batch=8, runner_steps=20, profile_sweep_steps=4,
              grid_lengths=(8, 16), sample_steps=10, sample_lengths=(8, 16), sample_d_states=(16,),
              scaling_packs=(1, 2), scaling_steps=(2, 5), scaling_quick_len=16,
              mqar_only=(("length", ("64",)), ("model.d_model", ("64",))), mqar_pack=2, mqar_steps=(2, 4))


class Clock:
    """Per-phase ``perf_counter`` marks of one step; ``sync`` synchronizes CUDA before each."""

    def __init__(self, sync: bool):
        self.sync = sync and torch.cuda.is_available()
        self.times: dict[str, float] = {}

    def start(self) -> None:
        self.times = {}
        self.t = time.perf_counter()

    def mark(self, phase: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times[phase] = now - self.t
        self.t = now


class Trainer:
    """The state of ``train()``'s loop (model, optimizer, config) and its body, one step a call."""

    def __init__(self, model: torch.nn.Module, task, config: TrainConfig, device: torch.device):
        self.model, self.task, self.config, self.device = model.to(device), task, config, device
        self.amp_dtype = torch.bfloat16 if device.type == "cuda" else None
        self.optimizer = build_optimizer(model, config)
        self.step = 0
        model.train()

    def run_step(self, clock: Clock) -> None:
        cfg, model, opt = self.config, self.model, self.optimizer
        clock.start()
        batch = batch_for_step(self.task, cfg, self.step)
        clock.mark("batch")
        input_ids, targets, mask = (t.to(self.device, non_blocking=True) for t in batch)
        lr = lr_at(self.step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        clock.mark("h2d")
        ctx = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else contextlib.nullcontext()
        with ctx:
            logits = model_logits(model, input_ids)
        clock.mark("forward")
        loss, acc = masked_loss_and_acc(logits, targets, mask)
        clock.mark("loss")
        loss.item()
        bool(torch.isfinite(loss))
        clock.mark("sync_loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clock.mark("backward")
        if cfg.grad_clip is not None:
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            clock.mark("clip")
            bool(torch.isfinite(gnorm))
        else:
            clock.mark("clip")
        clock.mark("sync_gnorm")
        opt.step()
        clock.mark("optimizer")
        acc.item()
        clock.mark("sync_acc")
        self.step += 1


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 4)


def anatomy_models(sizes: Sizes) -> list[tuple[str, Any, GridPoint]]:
    """(model name, sweep config, grid point) of every model the anatomy takes apart."""
    quick, wide = load_sweep(COPY_QUICK), load_sweep(COPY_LENGTH)
    out = []
    for layer in ("Mamba1", "Mamba2", "attention"):
        d_state = None if layer == "attention" else 16
        out.append(("quick", quick, GridPoint("copy", "default", layer, d_state, sizes.quick_len, 0)))
    for layer in ("Mamba1", "Mamba2"):
        out.append(("wide", wide, GridPoint("copy", "default", layer, 16, sizes.wide_len, 0)))
    return out


def train_config(cfg, sizes: Sizes, device: torch.device, **overrides) -> TrainConfig:
    """The sweep's [train] table as a TrainConfig, batch sizes overridden in smoke runs."""
    table = {**cfg.train, **overrides}
    if sizes.batch is not None:
        table.update(batch_size=sizes.batch, eval_batch_size=sizes.batch)
    return TrainConfig(**table, device=str(device), progress=False)


def anatomy_one(cfg, point: GridPoint, sizes: Sizes, device: torch.device, scratch: Path) -> dict[str, Any]:
    """Every anatomy number of one model (see the module docstring)."""
    task = cfg.task_for(point)
    tcfg = train_config(cfg, sizes, device)
    torch.manual_seed(0)
    model = build_model(cfg.model, task, point, cfg.init_for(point))
    trainer = Trainer(model, task, tcfg, device)
    rec: dict[str, Any] = {"seq_len": task.seq_len, "batch": tcfg.batch_size,
                           "n_params": sum(p.numel() for p in model.parameters())}

    clock = Clock(sync=False)
    t0 = time.perf_counter()
    trainer.run_step(clock)
    rec["first_step_s"] = round(time.perf_counter() - t0, 3)  # compile / autotune / cache loading
    for _ in range(sizes.warmup - 1):
        trainer.run_step(clock)

    for view, steps in (("loop", sizes.wall_steps), ("synced", sizes.synced_steps)):
        clock = Clock(sync=view == "synced")
        per_step, phases = [], {p: [] for p in PHASES}
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.run_step(clock)
            for p in PHASES:
                phases[p].append(clock.times[p])
            per_step.append(sum(clock.times.values()))
        sync()
        block = time.perf_counter() - t0
        rec[view] = {
            "ms_per_step_median": ms(statistics.median(per_step)),
            "ms_per_step_block": ms(block / steps),
            "phase_ms_median": {p: ms(statistics.median(v)) for p, v in phases.items()},
        }
    loop_phases = rec["loop"]["phase_ms_median"]
    rec["loop"]["host_ms"] = round(sum(v for p, v in loop_phases.items() if not p.startswith("sync")), 4)
    rec["loop"]["sync_wait_ms"] = round(sum(v for p, v in loop_phases.items() if p.startswith("sync")), 4)

    if device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        clock = Clock(sync=False)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(sizes.profile_steps):
                trainer.run_step(clock)
            sync()
        tot = device_time_totals(prof, top=8)
        n = sizes.profile_steps
        rec["gpu"] = {
            "kernel_ms_per_step": round(tot["kernel_ms"] / n, 4),
            "kernels_per_step": tot["kernels"] / n,
            "memcpy_memset_ms_per_step": round(tot["memcpy_memset_ms"] / n, 4),
            "memcpy_memset_per_step": tot["memcpy_memset"] / n,
            "busy_fraction": round(tot["kernel_ms"] / n / rec["loop"]["ms_per_step_median"], 4),
            "top_kernels_per_step": [{**k, "ms": round(k["ms"] / n, 4), "count": k["count"] / n} for k in tot["top"]],
        }
    else:
        rec["gpu"] = None

    eval_bs = tcfg.eval_batch_size or tcfg.batch_size
    times = []
    for _ in range(2):  # the first call warms the eval shapes up
        sync()
        t0 = time.perf_counter()
        evaluate(model, task, num_batches=tcfg.eval_batches, batch_size=eval_bs, seed=tcfg.eval_seed,
                 device=device, autocast_dtype=trainer.amp_dtype)
        times.append(time.perf_counter() - t0)
    rec["eval_ms"] = ms(times[-1])
    ckpt_dir = Path(tempfile.mkdtemp(dir=scratch))
    state = {"format": 1, "step": trainer.step, "optimizer": trainer.optimizer.state_dict(), "rng": rng_state(),
             "history": [], "config": tcfg.to_dict()}
    times = []
    for i in range(2):
        t0 = time.perf_counter()
        save_checkpoint(ckpt_dir, trainer.step + i, model, state, keep=tcfg.keep_checkpoints)
        times.append(time.perf_counter() - t0)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    rec["checkpoint_ms"] = ms(times[-1])
    rec["eval_every"] = tcfg.eval_every
    rec["eval_ckpt_ms_per_step"] = round((rec["eval_ms"] + rec["checkpoint_ms"]) / tcfg.eval_every, 4)

    check = train_config(cfg, sizes, device, steps=sizes.train_steps, eval_every=sizes.train_steps,
                         eval_batches=1, target_acc=None, cuda_graph=False)
    result = train(copy.deepcopy(model), task, check)
    rec["train_ms_per_step_mean"] = ms(result.elapsed / result.step)
    if device.type == "cuda":  # the CUDA-graph step (cuda_graph=None, the default); its mean holds the capture
        result = train(copy.deepcopy(model), task, dataclasses.replace(check, cuda_graph=None))
        rec["graph_train_ms_per_step_mean"] = ms(result.elapsed / result.step)
    return rec


def write_toml(data: dict[str, Any], path: Path) -> Path:
    """Write ``data`` (tables of scalars, lists and sub-tables) as TOML, checked by reading back."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"no TOML form for {v!r}")

    lines: list[str] = []

    def table(t: dict[str, Any], name: str) -> None:
        if name:
            lines.append(f"[{name}]")
        lines.extend(f"{k} = {value(v)}" for k, v in t.items() if not isinstance(v, dict))
        for k, v in t.items():
            if isinstance(v, dict):
                table(v, f"{name}.{k}" if name else k)

    table(data, "")
    text = "\n".join(lines) + "\n"
    if tomllib.loads(text) != json.loads(json.dumps(data)):
        raise ValueError(f"TOML writer lost something writing {path}")
    path.write_text(text)
    return path


def sweep_file(base: Path, name: str, grid: dict, steps: int, sizes: Sizes, min_points: int, scratch: Path,
               eager: bool = False) -> Path:
    """A copy of the sweep ``base`` with ``grid`` overrides, ``steps`` per run (two evals of one
    batch, no early stop, no [eval] lengths) and, unless ``grid`` sets the seeds, seeds
    0..k-1, k the fewest that give at least ``min_points`` points."""
    data = tomllib.loads(base.read_text())
    data.setdefault("sweep", {})["name"] = name
    data.pop("eval", None)
    data["grid"].update({"seed": [0], **grid})
    data["train"].update(steps=steps, eval_every=max(1, steps // 2), eval_batches=1, early_stop=False)
    if eager and "cuda_graph" in {f.name for f in dataclasses.fields(TrainConfig)}:
        data["train"]["cuda_graph"] = False  # today's runner: train()'s eager loop
    if sizes.batch is not None:
        data["train"].update(batch_size=sizes.batch, eval_batch_size=sizes.batch)
    if "seed" not in grid:
        per_seed = len(parse_sweep(data).points())
        data["grid"]["seed"] = list(range(math.ceil(min_points / per_seed)))
    return write_toml(data, scratch / f"{name}.toml")


def time_sweep(toml: Path, workers: int, scratch: Path, profile: bool = False, **kwargs) -> dict[str, Any]:
    """Wall time and throughput of one ``run_sweep`` call into a fresh folder (see the module
    docstring); with ``profile``, its total CUDA kernel time under ``torch.profiler``."""
    out = Path(tempfile.mkdtemp(dir=scratch))
    prof_ctx = contextlib.nullcontext()
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        prof_ctx = profiler(activities=[ProfilerActivity.CUDA])
    with prof_ctx as prof:
        t0 = time.perf_counter()
        res = run_sweep(toml, out, workers=workers, progress=False, plot=False, **kwargs)
        sync()
        wall = time.perf_counter() - t0
    rows = [r for r in res.rows if r.get("steps") and r.get("elapsed_s")]  # a diverged member has neither
    steps = sum(r["steps"] for r in rows)
    per_run = [r["steps"] / r["elapsed_s"] for r in rows]
    packed = kwargs.get("pack", "off") != "off"
    jobs: dict[Any, float] = {}  # training seconds per job: a run, or a pack (its members share them)
    for i, r in enumerate(rows):
        key = (r["layer"], r["d_state"], r["length"]) if packed else i
        jobs[key] = max(jobs.get(key, 0.0), r["elapsed_s"])
    by_layer: dict[str, list[float]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], []).append(r["steps"] / r["elapsed_s"])
    rec: dict[str, Any] = {
        "workers": workers,
        "points": len(res.rows),
        "failed_points": len(res.rows) - len(rows),
        "steps_per_run": max(r["steps"] for r in rows),
        "total_steps": steps,
        "wall_s": round(wall, 3),
        "model_steps_per_s": round(steps / wall, 2),
        "per_run_steps_per_s": {"median": round(statistics.median(per_run), 2),
                                "min": round(min(per_run), 2), "max": round(max(per_run), 2)},
        "per_run_steps_per_s_by_layer": {k: round(statistics.median(v), 2) for k, v in by_layer.items()},
        "train_fraction": round(sum(jobs.values()) / (wall * min(workers, len(jobs))), 4),
        "steady_s_per_step": steady_step_times(out, rows),
    }
    if profile:
        tot = device_time_totals(prof)
        rec["profile"] = {**tot, "kernel_fraction": round(tot["kernel_ms"] / 1e3 / wall, 4),
                          "kernels_per_model_step": round(tot["kernels"] / max(steps, 1), 1),
                          "note": "wall time under the profiler; kernels of worker processes are not seen"}
    shutil.rmtree(out, ignore_errors=True)
    return rec


def steady_step_times(out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seconds per training step of each run over its last eval window (metrics.jsonl), or
    over the whole run (elapsed_s / steps) when it has fewer than two records."""
    times = []
    for r in rows:
        point = GridPoint(**{k: r.get(k) for k in ("task", "init", "layer", "d_state", "length", "seed")})
        recs = read_metrics(out / "runs" / point.run_id)
        if len(recs) >= 2:
            s = (recs[-1]["elapsed"] - recs[-2]["elapsed"]) / (recs[-1]["step"] - recs[-2]["step"])
        else:
            s = r["elapsed_s"] / r["steps"] if r.get("elapsed_s") and r.get("steps") else None
        times.append({"layer": point.layer, "d_state": point.d_state, "length": point.length,
                      "s": None if s is None else round(s, 6)})
    return times


def interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise-linear interpolation, constant outside [xs[0], xs[-1]] (xs ascending)."""
    if x <= xs[0]:
        return ys[0]
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def estimate_grid(sample: dict[str, Any], packed: bool = False) -> dict[str, Any]:
    """GPU-hours of the full copy_length grid from a sample's steady step times (see the
    module docstring for what the estimate leaves out).

    A job is a run, or with ``packed`` a pack: the sample's points of one (layer, d_state,
    copy_len), whose members all report the pack's time. A point costs steps x its job's
    step time / the jobs that ran at once / its job's members in the full grid.
    """
    if "steady_s_per_step" not in sample:
        raise ValueError("no copy_length sample to extrapolate from")
    cfg = load_sweep(COPY_LENGTH)
    table: dict[tuple, list[float]] = {}
    for t in (t for t in sample["steady_s_per_step"] if t["s"] is not None):
        table.setdefault((t["layer"], t["d_state"], t["length"]), []).append(t["s"])
    mean = {k: statistics.mean(v) for k, v in table.items()}
    conc = min(sample["workers"], len(table) if packed else sum(map(len, table.values())))
    members: dict[tuple, int] = {}
    for p in cfg.points():
        key = (p.layer, p.d_state, p.length)
        members[key] = (members.get(key, 0) + 1) if packed else 1
    layers = sorted({k[0] for k in mean})
    d_states = sorted({k[1] for k in mean})
    lengths = sorted({k[2] for k in mean})

    def step_s(layer: str, d_state: int, length: int) -> float:
        along_d = [interp(length, lengths, [mean[(layer, d, n)] for n in lengths]) for d in d_states]
        return interp(d_state, d_states, along_d)

    steps = cfg.train["steps"]
    per_run = []
    for p in cfg.points():
        if p.layer in layers:
            s = step_s(p.layer, p.d_state, p.length)
        else:  # attention: not sampled, priced as the mean of the sampled SSMs at d_state 16
            s = statistics.mean(step_s(x, d_states[0], p.length) for x in layers)
        per_run.append(steps * s / conc / members[(p.layer, p.d_state, p.length)])
    hours = sum(per_run) / 3600
    return {
        "runs": len(per_run),
        "steps_per_run": steps,
        "concurrent_jobs": conc,
        "packed": packed,
        "gpu_hours": round(hours, 3),
        "gpu_hours_360_runs": round(statistics.mean(per_run) * GRID_PRODUCT_RUNS / 3600, 3),
        "note": ("approximate: attention priced as the mean SSM, no early stop, d_state/copy_len "
                 "interpolated (clamped outside the sample), start-up/eval/checkpoint time excluded"),
    }


def best_workers(runs: list[dict[str, Any]], default: int) -> int:
    ok = [r for r in runs if "model_steps_per_s" in r]
    return max(ok, key=lambda r: r["model_steps_per_s"])["workers"] if ok else default


class Report:
    """The JSON record of the run, rewritten after every measurement, and the guard that
    keeps one failure from losing the rest."""

    def __init__(self, out: Path, info: dict[str, Any], budget_s: float):
        self.path = out / "sweep_speed.json"
        self.data: dict[str, Any] = {"info": info, **{section: {} for section in SECTIONS}}
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.save()

    def save(self) -> None:
        self.data["info"]["total_s"] = round(time.perf_counter() - self.t0, 1)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)

    def measure(self, section: str, key: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` stored under data[section][key]; an error or a spent budget is stored instead."""
        used = time.perf_counter() - self.t0
        if used > self.budget_s:
            rec: Any = {"skipped": f"time budget spent ({used:.0f} s > {self.budget_s:.0f} s)"}
        else:
            t0 = time.perf_counter()
            try:
                rec = fn()
            except Exception as e:  # noqa: BLE001 -- recorded, and the next measurement goes on
                rec = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
            if isinstance(rec, dict):
                rec["section_s"] = round(time.perf_counter() - t0, 2)
            try:
                sync_free()
            except Exception as e:  # noqa: BLE001 -- a broken CUDA context: the next ones will say so
                if isinstance(rec, dict):
                    rec["cleanup_error"] = f"{type(e).__name__}: {e}"
        self.data[section][key] = rec
        self.save()
        print(json.dumps({"section": section, "key": key, **(rec if isinstance(rec, dict) else {"value": rec})},
                         default=str), flush=True)
        return rec


def sync_free() -> None:
    """Wait for the GPU and release its cached memory between measurements."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def run_anatomy(report: Report, sizes: Sizes, device: torch.device, scratch: Path) -> None:
    for name, cfg, point in anatomy_models(sizes):
        report.measure("anatomy", f"{name}/{point.layer}", lambda: anatomy_one(cfg, point, sizes, device, scratch))


def quick_grid_file(name: str, steps: int, sizes: Sizes, min_points: int, scratch: Path, eager: bool) -> Path:
    return sweep_file(COPY_QUICK, name, {"length": list(sizes.grid_lengths)}, steps, sizes, min_points, scratch,
                      eager)


def sample_file(sizes: Sizes, workers: int, scratch: Path, packed: bool) -> Path:
    """The copy_length sample: one init and enough seeds for ``workers`` runs, or with
    ``packed`` the file's inits and seeds, so that its packs are the full grid's."""
    grid: dict[str, Any] = {"layer": ["Mamba1", "Mamba2"], "d_state": list(sizes.sample_d_states),
                            "length": list(sizes.sample_lengths)}
    if not packed:
        grid["init"] = ["default"]
    else:
        grid["seed"] = load_sweep(COPY_LENGTH).grid["seed"]
    name = f"copy_length_sample_{'packed' if packed else 'w' + str(workers)}"
    return sweep_file(COPY_LENGTH, name, grid, sizes.sample_steps, sizes, workers, scratch, eager=not packed)


def has_pack() -> bool:
    """Whether ``run_sweep`` takes ``pack`` (the packed fast path)."""
    return "pack" in inspect.signature(run_sweep).parameters


def run_runner(report: Report, sizes: Sizes, workers: list[int], scratch: Path, device: torch.device,
               section: str = "runner", **kwargs) -> None:
    """The runner measurements of ``section``: "runner" is one run per process at a time
    (``pack="off"`` where ``run_sweep`` takes ``pack``), "packed" passes ``pack="auto"``."""
    if section == "runner" and has_pack():
        kwargs = {"pack": "off", **kwargs}
    eager = section == "runner"
    toml = quick_grid_file(f"copy_quick_{section}", sizes.runner_steps, sizes, max(workers), scratch, eager)
    runs = []
    for w in workers:
        runs.append(report.measure(section, f"copy_quick/W{w}", lambda: time_sweep(toml, w, scratch, **kwargs)))
    if device.type == "cuda":
        prof_toml = quick_grid_file(f"copy_quick_{section}_profiled", sizes.profile_sweep_steps, sizes, 1, scratch,
                                    eager)
        report.measure(section, "copy_quick/W1/profiled",
                       lambda: time_sweep(prof_toml, 1, scratch, profile=True, **kwargs))
    best = best_workers(runs, max(workers))
    packed = kwargs.get("pack", "off") != "off"
    sample = report.measure(section, f"copy_length_sample/W{best}",
                            lambda: time_sweep(sample_file(sizes, best, scratch, packed), best, scratch, **kwargs))
    report.measure(section, "copy_length_estimate", lambda: estimate_grid(sample, packed))


def measure_packed(report: Report, sizes: Sizes, workers: list[int], scratch: Path, device: torch.device) -> None:
    """The runner measurements through ``run_sweep(..., pack="auto")``, with W = 1 and the
    runner's best W; "not available" when ``run_sweep`` takes no ``pack``."""
    if not has_pack():
        report.measure("packed", "status", lambda: "not available: run_sweep has no pack parameter")
        return
    runs = [v for k, v in report.data["runner"].items() if k.startswith("copy_quick/W") and "profiled" not in k]
    best = best_workers(runs, max(workers))
    run_runner(report, sizes, sorted({1, best}), scratch, device, section="packed", pack="auto")


def pack_run(cfg, point: GridPoint, K: int, steps: int, sizes: Sizes, device: torch.device,
             profile: bool) -> tuple[float, dict[str, Any] | None]:
    """One ``train_ensemble`` of K members (seeds 0..K-1, the point's model, no files, one eval
    at the end): (wall seconds, the profiler's device-time totals with its heaviest kernels
    (``device_time_totals``), or None)."""
    from mimetic.ensemble.train import train_ensemble

    task = cfg.task_for(point)
    models = []
    for k in range(K):
        torch.manual_seed(k)
        models.append(build_model(cfg.model_for(point), task, dataclasses.replace(point, seed=k), cfg.init_for(point)))
    tcfgs = [train_config(cfg, sizes, device, steps=steps, eval_every=steps, eval_batches=1, seed=k,
                          early_stop=False, warmup_steps=min(cfg.train.get("warmup_steps", 0), steps))
             for k in range(K)]
    ctx = contextlib.nullcontext()
    if profile and device.type == "cuda":
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        ctx = profiler(activities=[ProfilerActivity.CUDA])
    sync()
    t0 = time.perf_counter()
    with ctx as prof:
        train_ensemble(models, task, tcfgs)
        sync()
    wall = time.perf_counter() - t0
    return wall, (device_time_totals(prof, top=40) if prof is not None else None)


def scaling_one(cfg, point: GridPoint, K: int, sizes: Sizes, device: torch.device,
                steps: tuple[int, int] | None = None) -> dict[str, Any]:
    """The steady cost of a training step of a K-member pack, without the fixed costs of a
    run (model build, Triton compilation, graph capture, the final eval): a short and a long
    run of ``sizes.scaling_steps`` steps, and their difference divided by the extra steps;
    on CUDA the same difference of kernel time under the profiler (separate runs) gives the
    kernel fraction of a steady step, and the kernels that take the most of it (by name, the
    same difference per step: where a steady step's GPU time goes)."""
    short, long = steps or sizes.scaling_steps
    pack_run(cfg, point, K, short, sizes, device, profile=False)  # compile and warm up
    walls = [pack_run(cfg, point, K, n, sizes, device, profile=False)[0] for n in (short, long)]
    step_s = (walls[1] - walls[0]) / (long - short)
    rec: dict[str, Any] = {"K": K, "seq_len": cfg.task_for(point).seq_len, "steady_ms_per_step": ms(step_s),
                           "steady_ms_per_model_step": ms(step_s / K), "walls_s": [round(w, 3) for w in walls]}
    if device.type == "cuda":
        totals = [pack_run(cfg, point, K, n, sizes, device, profile=True)[1] for n in (short, long)]
        kernel_ms = (totals[1]["kernel_ms"] - totals[0]["kernel_ms"]) / (long - short)
        rec.update(kernel_ms_per_step=round(kernel_ms, 4), kernel_ms_per_model_step=round(kernel_ms / K, 4),
                   kernel_fraction=round(kernel_ms / max(step_s * 1e3, 1e-9), 3),
                   top_kernels=steady_kernels(*totals, long - short))
    return rec


def steady_kernels(short: dict[str, Any], long: dict[str, Any], extra_steps: int, top: int = 12) -> list[dict]:
    """The heaviest kernels of a steady step: each kernel's ms in the long run less the short
    run's, per extra step (kernels outside either run's top list count as 0 there)."""
    before = {k["kernel"]: k for k in short["top"]}
    per_step = []
    for k in long["top"]:
        b = before.get(k["kernel"], {"ms": 0.0, "count": 0})
        per_step.append({"kernel": k["kernel"], "ms_per_step": round((k["ms"] - b["ms"]) / extra_steps, 4),
                         "launches_per_step": round((k["count"] - b["count"]) / extra_steps, 2)})
    return sorted(per_step, key=lambda k: -k["ms_per_step"])[:top]


def run_scaling(report: Report, sizes: Sizes, device: torch.device) -> None:
    """Pack size K against the steady cost a model-step: the quick models at copy_len 128
    (ablation_seeds.toml's shape) and the wide ones at copy_len 256."""
    quick, wide = load_sweep(COPY_QUICK), load_sweep(COPY_LENGTH)
    length = {"quick": sizes.scaling_quick_len, "wide": sizes.wide_len}
    for name, cfg in (("quick", quick), ("wide", wide)):
        for layer in ("Mamba1", "Mamba2"):
            point = GridPoint("copy", "mimetic", layer, 16, length[name], 0)
            for K in sizes.scaling_packs:
                report.measure("scaling", f"{name}/{layer}/K{K}", lambda: scaling_one(cfg, point, K, sizes, device))


def run_mqar(report: Report, sizes: Sizes, device: torch.device) -> None:
    """The steady step of one MQAR pack as the runner packs it (``mqar_zoology_small.toml`` at
    its longest sequence and narrowest width: ``sizes.mqar_only``), Mamba1 and Mamba2."""
    cfg = load_sweep(MQAR_SMALL)
    only = {key: list(values) for key, values in sizes.mqar_only}
    points = select_points(cfg, cfg.points(), only)
    for layer in ("Mamba1", "Mamba2"):
        point = next(p for p in points if p.layer == layer)
        report.measure("mqar", f"{layer}/L{point.length}/K{sizes.mqar_pack}",
                       lambda: scaling_one(cfg, point, sizes.mqar_pack, sizes, device, steps=sizes.mqar_steps))


def run_info(device: torch.device, sizes: Sizes, args: argparse.Namespace) -> dict[str, Any]:
    return env_info(device, device_type=device.type, cpu_count=len(os.sched_getaffinity(0)), argv=sys.argv[1:],
                    sizes=asdict(sizes))


def fmt(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def print_tables(data: dict[str, Any]) -> None:
    """The markdown summary: anatomy per model and view, runner throughput, estimates."""
    anatomy = {k: v for k, v in data["anatomy"].items() if "loop" in v}
    if anatomy:
        print("\n## Step anatomy (ms per step; medians)\n")
        print("| model | view | wall | train() | GPU kernels | kernels/step | " + " | ".join(PHASES) + " |")
        print("|" + "---|" * (6 + len(PHASES)))
        for key, rec in anatomy.items():
            gpu = rec["gpu"] or {}
            for view in ("loop", "synced"):
                v = rec[view]
                first = view == "loop"
                print(f"| {key} (seq {rec['seq_len']}) | {view} | {fmt(v['ms_per_step_median'])} | "
                      f"{fmt(rec['train_ms_per_step_mean']) if first else ''} | "
                      f"{fmt(gpu.get('kernel_ms_per_step')) if first else ''} | "
                      f"{fmt(gpu.get('kernels_per_step'), 0) if first else ''} | "
                      + " | ".join(fmt(v["phase_ms_median"][p]) for p in PHASES) + " |")
        print("\nloop view: phases are host time, GPU waits land in sync_* and loss; synced view: each phase "
              "includes its GPU work. eval + checkpoint amortized per step: "
              + ", ".join(f"{k} {fmt(r['eval_ckpt_ms_per_step'])}" for k, r in anatomy.items()))
    for section in ("runner", "packed"):
        recs = data[section]
        runs = {k: v for k, v in recs.items() if isinstance(v, dict) and "model_steps_per_s" in v}
        if runs:
            print(f"\n## Sweep runner{' (pack=auto)' if section == 'packed' else ''}\n")
            print("| sweep | points x steps | wall s | model-steps/s | per-run steps/s (median) | "
                  "train fraction | kernel fraction |")
            print("|---|---|---|---|---|---|---|")
            for key, r in runs.items():
                kf = r.get("profile", {}).get("kernel_fraction")
                print(f"| {key} | {r['points']} x {r['steps_per_run']} | {fmt(r['wall_s'], 1)} | "
                      f"{fmt(r['model_steps_per_s'], 1)} | {fmt(r['per_run_steps_per_s']['median'], 1)} | "
                      f"{fmt(r['train_fraction'])} | {fmt(kf)} |")
        est = recs.get("copy_length_estimate")
        if isinstance(est, dict) and "gpu_hours" in est:
            print(f"\ncopy_length full grid ({section}): {est['runs']} runs x {est['steps_per_run']} steps "
                  f"~ {est['gpu_hours']:.2f} GPU-h at {est['concurrent_jobs']} concurrent jobs "
                  f"({GRID_PRODUCT_RUNS} runs: {est['gpu_hours_360_runs']:.2f} GPU-h); {est['note']}")
        if isinstance(recs.get("status"), str):
            print(f"\n{section}: {recs['status']}")
    scaling = {f"{s}/{k}": v for s in ("scaling", "mqar") for k, v in data[s].items()
               if isinstance(v, dict) and "K" in v}
    if scaling:
        print("\n## Pack size vs the steady step (train_ensemble, fixed costs subtracted)\n")
        print("| model (seq) | K | ms/step | ms/model-step | kernel ms/model-step | kernel fraction |")
        print("|---|---|---|---|---|---|")
        for key, r in scaling.items():
            print(f"| {key.rsplit('/', 1)[0]} ({r['seq_len']}) | {r['K']} | {fmt(r['steady_ms_per_step'])} | "
                  f"{fmt(r['steady_ms_per_model_step'])} | {fmt(r.get('kernel_ms_per_model_step'))} | "
                  f"{fmt(r.get('kernel_fraction'))} |")
        model = {key: key.rsplit("/", 1)[0] for key in scaling}  # the key less its K
        largest = {m: max(r["K"] for k, r in scaling.items() if model[k] == m) for m in set(model.values())}
        for key, r in scaling.items():
            if r["K"] == largest[model[key]] and r.get("top_kernels"):
                print(f"\n{key}, heaviest kernels of a steady step (ms, launches):")
                for k in r["top_kernels"][:6]:
                    print(f"  {k['ms_per_step']:8.3f} {k['launches_per_step']:6.1f}  {k['kernel']}")
    failed = [f"{s}/{k}: {(v.get('error') or v.get('skipped')).splitlines()[0]}" for s in SECTIONS
              for k, v in data[s].items() if isinstance(v, dict) and ("error" in v or "skipped" in v)]
    if failed:
        print("\nnot measured:\n" + "\n".join(f"- {f}" for f in failed))
    print(f"\ntotal {data['info']['total_s']} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for sweep_speed.json")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and step counts (a CPU check)")
    ap.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                    help="comma-separated subset of " + ",".join(SECTIONS) + " (default: all but mqar)")
    ap.add_argument("--workers", default=None, help="worker counts of the runner (default 1,4,8; smoke 1,2)")
    ap.add_argument("--packs", default=None,
                    help="pack sizes K of the scaling section (default 1,4,16,64; smoke 1,2)")
    ap.add_argument("--budget-s", type=float, default=360.0,
                    help="start no measurement after this many seconds")
    args = ap.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown section(s) {unknown}; valid: {list(SECTIONS)}")
    workers = [int(w) for w in (args.workers or ("1,2" if args.smoke else "1,4,8")).split(",")]
    sizes = SMOKE if args.smoke else FULL
    if args.packs:
        sizes = dataclasses.replace(sizes, scaling_packs=tuple(int(k) for k in args.packs.split(",")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, run_info(device, sizes, args), args.budget_s)
    print(json.dumps(report.data["info"]), flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="sweep_speed_"))
    try:
        if "anatomy" in sections:
            run_anatomy(report, sizes, device, scratch)
        if "runner" in sections:
            run_runner(report, sizes, workers, scratch, device)
        if "packed" in sections:
            measure_packed(report, sizes, workers, scratch, device)
        if "scaling" in sections:
            run_scaling(report, sizes, device)
        if "mqar" in sections:
            run_mqar(report, sizes, device)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        report.save()
        print_tables(report.data)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
