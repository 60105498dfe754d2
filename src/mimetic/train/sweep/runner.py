"""Running a sweep: one training run per grid point, results to CSV, plots to PNG."""
from __future__ import annotations

import csv
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from ..._progress import progress_bar
from ..._validate import device_problem
from ...models import MambaLM
from ...tasks import Task, derive_seed
from ..loop import NonFiniteLossError, train
from ..resume import run_lock
from .best import best_rows
from .config import (
    GRID_KEYS,
    GridPoint,
    SweepConfig,
    axis_columns,
    check_default_models,
    freeze_value,
    load_sweep,
    mamba_config,
)
from .events import SweepLog, job_label, rows_summary
from .history import HISTORY_CSV, collect_history
from .packed import StreamLease, _resume_step, by_cost, pack_points, run_pack
from .plots import plot_history, plot_sweep
from .record import check_and_record
from .rows import ROW_FILE, length_evals, result_row, write_row
from .select import select_points

RESULTS_CSV = "results.csv"
SUMMARY_CSV = "summary.csv"
BEST_SUMMARY_CSV = "summary_best.csv"

ModelFactory = Callable[[dict, Task, GridPoint], torch.nn.Module]


def build_model(
    model_cfg: dict[str, Any], task: Task, point: GridPoint, init_spec: tuple[str, dict] | None = None
) -> torch.nn.Module:
    """The default model factory: a ``MambaLM`` for the grid point.

    ``init_spec`` = (init, init_cfg) resolves named init variants (``[inits.<name>]``);
    None = ``point.init`` with no knobs.

    ``model_cfg`` is the sweep's ``[model]`` table. ``ssm_cfg`` entries whose value is a table
    named after a layer type ("Mamba1"/"Mamba2") apply to that type only. Attention points
    make every layer attention (``attn_layer_idx = all``) with ``attn_cfg``.
    """
    init, init_cfg = init_spec if init_spec is not None else (point.init, {})
    return MambaLM(mamba_config(model_cfg, task.vocab_size, point, init, init_cfg))


@dataclass
class SweepResult:
    """What ``run_sweep`` returns: one row per run, the files it wrote."""

    rows: list[dict[str, Any]]
    csv_path: Path | None
    summary_path: Path | None
    plots: list[Path] = field(default_factory=list)
    skipped: int = 0
    history_path: Path | None = None


def run_point(
    cfg: SweepConfig,
    point: GridPoint,
    run_dir: Path,
    device: str | None = None,
    progress: bool = False,
    model_factory: ModelFactory | None = None,
) -> dict[str, Any]:
    """Train one grid point in ``run_dir`` (resuming if it has checkpoints) and return its row.

    The model is initialised under ``torch.manual_seed(derive_seed("init", seed))``, so the
    seed axis changes the init and the data stream. The row is also written to
    ``run_dir/row.json``, which marks the point finished. A point whose training diverges
    (``NonFiniteLossError``) finishes with an ``error`` row, as a pack member does, so one bad
    setting (an lr axis value too high) does not stop the sweep at it on every re-run.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    task = cfg.task_for(point)
    model_cfg = cfg.model_for(point)  # [model] with the point's model.* axes
    torch.manual_seed(derive_seed("init", point.seed))
    if model_factory is None:
        model = build_model(model_cfg, task, point, cfg.init_for(point))
    else:
        model = model_factory(model_cfg, task, point)
    tcfg = cfg.train_config(point, run_dir, device, progress)
    try:
        result = train(model, task, tcfg)
    except NonFiniteLossError as e:  # a diverged point is a result, as in a pack: the sweep goes on
        row = {**point.to_dict(), "seq_len": task.seq_len, "error": str(e)}
        write_row(run_dir, row)
        return row
    row = result_row(point, task, result)
    # train() leaves the final weights in `model`, also when it returned a stored result
    # (a point whose training finished before a crash in this length evaluation).
    row.update(length_evals(cfg, model, task, tcfg))
    write_row(run_dir, row)
    return row


def _train_job(cfg: SweepConfig, points: list[GridPoint], runs: Path, device: str | None, progress: bool,
               factory: ModelFactory | None, packed: bool) -> list[dict[str, Any]]:
    """Train one job: a pack of ``points``, or its one point alone; their rows."""
    if packed:
        return run_pack(cfg, points, runs, device, progress)
    return [run_point(cfg, points[0], runs / points[0].run_id, device, progress, factory)]


def _worker(args: tuple, log: SweepLog | None = None, index: int = 0, total: int = 0) -> list[dict[str, Any]]:
    """A job in a worker process (or a Ray task): ``args`` = (cfg, points, runs, device,
    factory, threads, packed); with ``log``, between its start and finish lines."""
    cfg, points, runs, device, factory, threads, packed = args
    if threads:
        torch.set_num_threads(threads)
    job = lambda: _train_job(cfg, points, Path(runs), device, False, factory, packed)  # noqa: E731
    return job() if log is None else log.job(cfg, points, Path(runs), index, total, packed, job)


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Worker initializer: exit when the sweep process that started this worker is gone
    (killed, even with SIGKILL), instead of training on and then waiting forever for a
    parent that will never collect the result. A daemon thread polls the parent pid."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)  # the result has nowhere to go; checkpoints on disk stay resumable

    threading.Thread(target=watch, name="mimetic-parent-watch", daemon=True).start()


def _on_one_gpu(device: str | None) -> bool:
    if device is None:
        return torch.cuda.device_count() == 1
    return torch.device(device).type == "cuda"


def run_sweep(
    config_path: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    workers: int = 1,
    device: str | None = None,
    progress: bool = True,
    dry_run: bool = False,
    plot: bool = True,
    model_factory: ModelFactory | None = None,
    pack: str | int = "auto",
    ray: str | bool | None = None,
    only: Mapping[str, Sequence[Any]] | None = None,
    report_only: bool = False,
) -> SweepResult:
    """Run every point of the sweep in ``config_path`` (TOML; format in ``sweep/config.py``).

    Args:
        config_path: the sweep file, e.g. ``experiments/copy_length.toml``.
        out_dir: output folder; default ``runs/<sweep name>``. Layout: ``runs/<run_id>/`` per
            point (checkpoints, metrics.jsonl, result.json, row.json), ``results.csv`` (one row
            per run: grid keys, seq_len, final/best metrics, steps_to_target, steps, time,
            n_params, gen_*@<length> for [eval] lengths), ``summary.csv`` (mean/std over
            seeds; with ``[sweep] best_over`` also ``summary_best.csv``, of each seed's best run
            over those axes), ``history.csv`` (every evaluation of every run, finished or
            not: ``history.collect_history``), ``plots/*.png`` (``<task>_acc_vs_steps.png``
            among them, from the history), ``sweep.json`` (the parsed config).
        workers: jobs at once (packs, or points with ``pack="off"``). Packs on one GPU run
            in threads of this process, each on its own CUDA stream; otherwise jobs run in
            spawned processes, spread over the visible GPUs round-robin when ``device`` is
            None and CUDA has several; on CPU each worker gets ``cpu_count // workers``
            threads. 1 = one job at a time in this process.
        device: "cuda", "cuda:1", "cpu"... ; None = CUDA if available.
        progress: progress bars (per run in this process, per sweep with workers > 1). Where
            no bar is drawn (False, or stderr not a terminal) the sweep writes one plain line
            per event to stderr instead: its start, each job's start and finish (seconds,
            model-steps/s, mean final token accuracy or errors), the end (``sweep/events.py``).
        dry_run: validate and list the points without training (rows hold only grid keys).
        plot: draw the PNG plots at the end.
        model_factory: ``f(model_cfg, task, point) -> nn.Module``; default ``build_model``
            (``MambaLM``). Must be a picklable top-level function when ``workers > 1``.
            A custom factory trains one point at a time (its models cannot be stacked).
        pack: "auto" = points of one shape that differ only in seed, init, lr, weight decay
            (see ``sweep/packed.py``) train together as one ensemble of as many models as fit
            the device, each model exactly its own run; an int caps the pack size; "off" (or
            1) trains one point at a time.
        ray: None = run here; True/"local" = each job a task on a local Ray instance, an
            address (``"auto"``, ``"ray://head:10001"``) = on that cluster, one GPU share a
            job (``sweep/ray_runner.py``; ``workers`` and ``device`` are then Ray's).
        only: train only the points whose value of each key is one of the given ones,
            ``{"layer": ["Mamba1"], "seed": [0, 1]}`` (grid keys or extra axes' dotted paths;
            strings as on the command line also match numbers: ``"1e-3"``; ``sweep/select.py``).
            ``results.csv`` and the plots still hold every point of ``out_dir`` that has a row;
            the returned rows are the selected points'.
        report_only: train nothing: write the CSVs, the history and the plots of the runs
            already in ``out_dir`` (a sweep cut off by a time limit, read where it stopped).
    Points already finished in ``out_dir`` (``row.json`` present) are skipped and partially
    trained ones resume from their checkpoints, so re-running a sweep continues it. Results
    CSV and summary are rewritten after every finished point. Jobs start cheapest first by an
    estimate from the config (``packed.by_cost``), so a sweep cut short by a time limit leaves
    the most finished points, spread over the grid.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if isinstance(pack, bool) or not (pack in ("auto", "off") or (isinstance(pack, int) and pack >= 1)):
        # checked before the folder is touched (sweep.json written, the lock taken)
        raise ValueError(f"pack must be 'auto', 'off' or a positive int, got {pack!r}")
    if not isinstance(config_path, (str, os.PathLike)):
        raise TypeError(f"run_sweep: config_path must be the path of a sweep .toml file, "
                        f"got {type(config_path).__name__}")
    if device is not None and device_problem(device) is not None:
        raise ValueError(f"run_sweep: {device_problem(device)}")
    cfg = load_sweep(config_path)
    out = Path(out_dir) if out_dir is not None else Path("runs") / cfg.name
    points = cfg.points()
    selected = select_points(cfg, points, only) if only else points
    if dry_run:  # lists the grid of the file, whatever factory will build its models
        return SweepResult(rows=[p.to_dict() for p in selected], csv_path=None, summary_path=None)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, what="sweep"):  # one sweep per folder (each point's run locks its own)
        if model_factory is None and not report_only:  # MambaLM's shape checks, before the first trains
            check_default_models(cfg, points, str(config_path))
        return _run_locked(cfg, out, points, selected, workers=workers, device=device, progress=progress,
                           plot=plot, model_factory=model_factory, pack=pack, ray=ray,
                           report_only=report_only)


def _run_locked(cfg: SweepConfig, out: Path, points: list[GridPoint], selected: list[GridPoint], *,
                workers: int, device: str | None, progress: bool, plot: bool,
                model_factory: ModelFactory | None, pack: str | int, ray: str | bool | None,
                report_only: bool = False) -> SweepResult:
    """``run_sweep`` once it holds the folder's lock: trains the ``selected`` of ``points``
    that have no row yet (none with ``report_only``)."""
    check_and_record(cfg, points, out / "runs", out)  # never mix rows of two configs (record.py)
    (out / "sweep.json").write_text(json.dumps(_cfg_dict(cfg), indent=1))

    rows: dict[GridPoint, dict[str, Any]] = {}
    todo: list[GridPoint] = []
    chosen = set(selected)
    for p in points:
        row_file = out / "runs" / p.run_id / ROW_FILE
        row = _read_row(row_file) if row_file.exists() else None
        if row is not None:
            rows[p] = row
        elif p in chosen and not report_only:
            todo.append(p)
    skipped = sum(p in rows for p in selected)   # finished before: not trained again

    def finished(point: GridPoint, row: dict[str, Any]) -> None:
        rows[point] = row
        write_results(out, [rows[p] for p in points if p in rows], cfg.best_over, cfg.metric)

    bar = progress_bar(total=len(selected), initial=skipped, desc=f"sweep {cfg.name}", enabled=progress)
    log = SweepLog(cfg.name, enabled=bool(bar.disable), metric=cfg.metric)  # lines where no bar is drawn
    counted = (f"{len(points)} points" if len(selected) == len(points)
               else f"{len(selected)} of {len(points)} points selected") + f", {skipped} done, {len(todo)} to run"
    runs = out / "runs"
    on_ray = ray is not None and ray is not False
    if on_ray:
        from .ray_runner import import_ray, run_on_ray  # ray_runner imports this module

        import_ray()  # a missing Ray is a one-line error before any line of this sweep
        log(f"start: {counted}, on Ray")
        starts = {p: _resume_step(runs / p.run_id) for p in todo} if log.enabled else {}
        for n, job in enumerate(run_on_ray(cfg, todo, runs, pack=pack, model_factory=model_factory, address=ray)):
            for p, row in zip(job.points, job.rows):
                finished(p, row)
            bar.update(len(job.points))
            if log.enabled:
                log.finished(f"Ray job {n + 1} ({job_label(job.points)})", job.rows, starts[job.points[0]],
                             job.seconds)
        jobs, packed, workers = [], False, 1  # all trained: the loops below have nothing to do
    elif pack == "off" or model_factory is not None:
        jobs, packed = [[p] for p in by_cost(cfg, todo, runs)], False
    else:
        jobs = pack_points(cfg, todo, runs, capacity=None if pack == "auto" else pack, device=device,
                           concurrent=max(1, workers))
        packed = True
    total = len(jobs)
    threaded = workers > 1 and packed and _on_one_gpu(device)
    if not on_ray:
        how = ("one at a time" if workers <= 1 else
               f"{workers} at once ({'threads on one GPU' if threaded else 'processes'})")
        log(f"start: {counted}" + (f" as {total} {'packs' if packed else 'runs'}, {how}" if jobs else ""))

    if workers <= 1:
        for i, job in enumerate(jobs):
            bar.set_postfix_str(job[0].run_id + (f" +{len(job) - 1}" if len(job) > 1 else ""))
            job_rows = log.job(cfg, job, runs, i + 1, total, packed,
                               lambda job=job: _train_job(cfg, job, runs, device, progress, model_factory, packed))
            for p, row in zip(job, job_rows):
                finished(p, row)
            bar.update(len(job))
    elif threaded:
        streams = StreamLease(workers, device)
        with ThreadPoolExecutor(max_workers=workers) as threads_pool:
            futures = {threads_pool.submit(log.job, cfg, job, runs, i + 1, total, True,
                                           lambda job=job: streams.run_pack(cfg, job, runs, device)): job
                       for i, job in enumerate(jobs)}
            for fut in as_completed(futures):
                for p, row in zip(futures[fut], fut.result()):
                    finished(p, row)
                bar.update(len(futures[fut]))
    else:
        n_gpu = torch.cuda.device_count() if device is None else 0
        threads = 0 if n_gpu else max(1, (os.cpu_count() or 1) // workers)
        args = []
        for i, job in enumerate(jobs):
            dev = f"cuda:{i % n_gpu}" if n_gpu > 1 else device
            args.append((cfg, job, str(runs), dev, model_factory, threads, packed))
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                 initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_worker, a, log, i + 1, total): a[1] for i, a in enumerate(args)}
            for fut in as_completed(futures):
                for p, row in zip(futures[fut], fut.result()):
                    finished(p, row)
                bar.update(len(futures[fut]))
    bar.close()

    if todo:
        log(f"done: {len(todo)} runs{f' in {total} packs' if packed else ''}, {len(rows)} of {len(points)} "
            f"points have rows; {rows_summary([rows[p] for p in todo], cfg.metric)}")
    ordered = [rows[p] for p in points if p in rows]  # every point with a row, selected or not
    csv_path, summary_path = write_results(out, ordered, cfg.best_over, cfg.metric)
    history = collect_history(points, runs)
    history_path = out / HISTORY_CSV if history else None
    if history_path is not None:
        _write_csv(history_path, history)
    plots: list[Path] = []
    if plot and cfg.best_over:  # drawn from each seed's best run, as the best summary
        best = [{k: v for k, v in r.items() if k not in cfg.best_over}  # the winners' values vary by seed
                for r in best_rows(ordered, cfg.best_over, cfg.metric)]
        plots = plot_sweep(best, out / "plots", metric=cfg.metric,
                           title=f"{cfg.name} (each seed's best {', '.join(cfg.best_over)})")
    elif plot:
        plots = plot_sweep(ordered, out / "plots", metric=cfg.metric, title=cfg.name)
    if plot and history:
        per_eval = cfg.metric.removeprefix("final_").removeprefix("best_")  # its name in an eval record
        plots += plot_history(history, out / "plots", metric=per_eval, title=cfg.name)
    return SweepResult(rows=[rows[p] for p in selected if p in rows], csv_path=csv_path,  # (report_only: some unrun)
                       summary_path=summary_path, plots=plots, skipped=skipped, history_path=history_path)


def _read_row(row_file: Path) -> dict[str, Any] | None:
    """A finished point's row, or None (with a warning) when ``row.json`` cannot be read: the
    point is then run again, which costs little (its run folder holds the result or the
    checkpoints, so ``train`` returns or resumes) and loses nothing, where failing would
    leave the whole sweep stuck on one damaged file."""
    try:
        row = json.loads(row_file.read_text())
        if not isinstance(row, dict):
            raise ValueError(f"a {type(row).__name__}, not a row")
    except (ValueError, UnicodeDecodeError) as e:
        warnings.warn(f"{row_file} is unreadable ({' '.join(str(e).split())}); running the point again "
                      "from its run folder", stacklevel=3)
        return None
    return row


def _cfg_dict(cfg: SweepConfig) -> dict[str, Any]:
    return asdict(cfg)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    os.replace(tmp, path)


def summarize(rows: list[dict[str, Any]], over: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of every numeric column, per (task, init, layer,
    d_state, length, extra grid axes but those in ``over``); ``n_seeds`` counts the runs;
    ``n_reached_target`` those that reached the target accuracy. ``over``: axes whose value
    may differ between the seeds of a group (``best_rows``' tuned axes); their values are
    listed per group, in the rows' order (``<axis>_values``)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    axes = axis_columns(rows)
    keys = [k for k in GRID_KEYS if k != "seed"] + [a for a in axes if a not in over]
    for r in rows:
        groups.setdefault(tuple(freeze_value(r.get(k)) for k in keys), []).append(r)
    out = []
    for gkey, rs in groups.items():
        s: dict[str, Any] = dict(zip(keys, gkey))
        s["n_seeds"] = len(rs)
        s["n_reached_target"] = sum(r.get("steps_to_target") is not None for r in rs)
        for a in over:
            s[f"{a}_values"] = " ".join(str(r.get(a)) for r in rs)
        numeric: list[str] = []
        for r in rs:  # union over rows: a column can be None in some (e.g. steps_to_target)
            numeric += [
                k for k, v in r.items()
                if k not in GRID_KEYS and k not in axes and k not in numeric
                and isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
        for k in numeric:
            vals = torch.tensor([float(r[k]) for r in rs if r.get(k) is not None], dtype=torch.float64)
            if len(vals):
                s[f"{k}_mean"] = float(vals.mean())
                s[f"{k}_std"] = float(vals.std(unbiased=False))
        out.append(s)
    return out


def write_results(out: Path, rows: list[dict[str, Any]], best_over: tuple[str, ...] = (),
                  metric: str = "final_token_acc") -> tuple[Path, Path]:
    """Write ``results.csv`` (rows) and ``summary.csv`` (``summarize(rows)``) atomically; with
    ``best_over`` also ``summary_best.csv``: the summary of each seed's best run over those
    axes by ``metric`` (``best.best_rows``)."""
    csv_path, summary_path = out / RESULTS_CSV, out / SUMMARY_CSV
    if best_over:
        _write_csv(out / BEST_SUMMARY_CSV, summarize(best_rows(rows, best_over, metric), over=best_over))
    _write_csv(csv_path, rows)
    _write_csv(summary_path, summarize(rows))
    return csv_path, summary_path
