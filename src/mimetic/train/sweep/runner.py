"""Running a sweep: one training run per grid point, results to CSV, plots to PNG."""
from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import torch

from ...tasks import Task, derive_seed, evaluate
from ..config import TrainConfig
from ..loop import train
from .config import ATTENTION, GRID_KEYS, GridPoint, SweepConfig, axis_columns, freeze_value, load_sweep

ROW_FILE = "row.json"
RESULTS_CSV = "results.csv"
SUMMARY_CSV = "summary.csv"

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
    from ...models import MambaConfig, MambaLM

    cfg = {k: v for k, v in model_cfg.items() if k != "ssm_cfg"}
    if point.layer == ATTENTION:
        cfg["attn_layer_idx"] = list(range(cfg["n_layer"]))
    else:
        ssm = {k: v for k, v in model_cfg.get("ssm_cfg", {}).items() if not isinstance(v, dict)}
        ssm.update(model_cfg.get("ssm_cfg", {}).get(point.layer, {}))
        cfg["ssm_cfg"] = {**ssm, "layer": point.layer, "d_state": point.d_state}
        cfg.pop("attn_cfg", None)  # pure SSM: attention settings only matter for baselines
    init, init_cfg = init_spec if init_spec is not None else (point.init, {})
    return MambaLM(MambaConfig(**cfg, vocab_size=task.vocab_size, init=init, init_cfg=init_cfg))


@dataclass
class SweepResult:
    """What ``run_sweep`` returns: one row per run, the files it wrote."""

    rows: list[dict[str, Any]]
    csv_path: Path | None
    summary_path: Path | None
    plots: list[Path] = field(default_factory=list)
    skipped: int = 0


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
    ``run_dir/row.json``, which marks the point finished.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    task = cfg.task_for(point)
    model_cfg = cfg.model_for(point)  # [model] with the point's model.* axes
    torch.manual_seed(derive_seed("init", point.seed))
    if model_factory is None:
        model = build_model(model_cfg, task, point, cfg.init_for(point))
    else:
        model = model_factory(model_cfg, task, point)
    tcfg = TrainConfig(
        **cfg.train_for(point), seed=point.seed, out_dir=str(run_dir), resume=True, device=device, progress=progress
    )
    result = train(model, task, tcfg)

    row: dict[str, Any] = {**point.to_dict(), "seq_len": task.seq_len}
    final, best = result.final or {}, result.best or {}
    row.update(
        final_token_acc=final.get("token_acc"),
        final_seq_acc=final.get("seq_acc"),
        final_loss=final.get("loss"),
        best_token_acc=best.get("token_acc"),
        best_seq_acc=best.get("seq_acc"),
        best_step=best.get("step"),
        steps_to_target=result.steps_to_target,
        steps=result.step,
        stopped_early=result.stopped_early,
        elapsed_s=round(result.elapsed, 3),
        tokens=result.tokens,
        n_params=result.n_params,
    )
    lengths = cfg.eval.get("lengths", [])
    if lengths:
        # train() leaves the final weights in `model`, also when it returned a stored result
        # (a point whose training finished before a crash in this length evaluation).
        for n in lengths:
            m = evaluate(
                model, task.with_length(n),
                num_batches=cfg.eval.get("batches", 4),
                batch_size=cfg.eval.get("batch_size", tcfg.eval_batch_size or tcfg.batch_size),
                seed=tcfg.eval_seed,
                autocast_dtype=torch.bfloat16 if next(model.parameters()).is_cuda else None,
            )
            row[f"gen_token_acc@{n}"] = m["token_acc"]
            row[f"gen_seq_acc@{n}"] = m["seq_acc"]
    tmp = run_dir / (ROW_FILE + ".tmp")
    tmp.write_text(json.dumps(row))
    os.replace(tmp, run_dir / ROW_FILE)
    return row


def _worker(args: tuple) -> dict[str, Any]:
    cfg, point, run_dir, device, factory, threads = args
    if threads:
        torch.set_num_threads(threads)
    return run_point(cfg, point, Path(run_dir), device=device, progress=False, model_factory=factory)


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
) -> SweepResult:
    """Run every point of the sweep in ``config_path`` (TOML; format in ``sweep/config.py``).

    Args:
        config_path: the sweep file, e.g. ``experiments/copy_length.toml``.
        out_dir: output folder; default ``runs/<sweep name>``. Layout: ``runs/<run_id>/`` per
            point (checkpoints, metrics.jsonl, result.json, row.json), ``results.csv`` (one row
            per run: grid keys, seq_len, final/best metrics, steps_to_target, steps, time,
            n_params, gen_*@<length> for [eval] lengths), ``summary.csv`` (mean/std over
            seeds), ``plots/*.png``, ``sweep.json`` (the parsed config).
        workers: parallel processes (spawned). Points are spread over the visible GPUs
            round-robin when ``device`` is None and CUDA has several; on CPU each worker gets
            ``cpu_count // workers`` threads. 1 = run in this process.
        device: "cuda", "cuda:1", "cpu"... ; None = CUDA if available.
        progress: progress bars (per run in this process, per sweep with workers > 1).
        dry_run: validate and list the points without training (rows hold only grid keys).
        plot: draw the PNG plots at the end.
        model_factory: ``f(model_cfg, task, point) -> nn.Module``; default ``build_model``
            (``MambaLM``). Must be a picklable top-level function when ``workers > 1``.

    Points already finished in ``out_dir`` (``row.json`` present) are skipped and partially
    trained ones resume from their checkpoints, so re-running a sweep continues it. Results
    CSV and summary are rewritten after every finished point.
    """
    from tqdm.auto import tqdm

    cfg = load_sweep(config_path)
    out = Path(out_dir) if out_dir is not None else Path("runs") / cfg.name
    points = cfg.points()
    if dry_run:
        return SweepResult(rows=[p.to_dict() for p in points], csv_path=None, summary_path=None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(_cfg_dict(cfg), indent=1))

    rows: dict[GridPoint, dict[str, Any]] = {}
    todo: list[GridPoint] = []
    for p in points:
        row_file = out / "runs" / p.run_id / ROW_FILE
        if row_file.exists():
            rows[p] = json.loads(row_file.read_text())
        else:
            todo.append(p)
    skipped = len(rows)

    def finished(point: GridPoint, row: dict[str, Any]) -> None:
        rows[point] = row
        write_results(out, [rows[p] for p in points if p in rows])

    bar = tqdm(total=len(points), initial=skipped, desc=f"sweep {cfg.name}", disable=not progress)
    if workers <= 1:
        for p in todo:
            bar.set_postfix_str(p.run_id)
            finished(p, run_point(cfg, p, out / "runs" / p.run_id, device, progress, model_factory))
            bar.update(1)
    else:
        n_gpu = torch.cuda.device_count() if device is None else 0
        threads = 0 if n_gpu else max(1, (os.cpu_count() or 1) // workers)
        jobs = []
        for i, p in enumerate(todo):
            dev = f"cuda:{i % n_gpu}" if n_gpu > 1 else device
            jobs.append((cfg, p, str(out / "runs" / p.run_id), dev, model_factory, threads))
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_worker, job): job[1] for job in jobs}
            for fut in as_completed(futures):
                finished(futures[fut], fut.result())
                bar.update(1)
    bar.close()

    ordered = [rows[p] for p in points]
    csv_path, summary_path = write_results(out, ordered)
    plots: list[Path] = []
    if plot:
        from .plots import plot_sweep

        plots = plot_sweep(ordered, out / "plots", metric=cfg.metric, title=cfg.name)
    return SweepResult(rows=ordered, csv_path=csv_path, summary_path=summary_path, plots=plots, skipped=skipped)


def _cfg_dict(cfg: SweepConfig) -> dict[str, Any]:
    from dataclasses import asdict

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


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of every numeric column, per (task, init, layer,
    d_state, length, extra grid axes); ``n_seeds`` counts the runs; ``n_reached_target`` those
    that reached the target accuracy."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    axes = axis_columns(rows)
    keys = [k for k in GRID_KEYS if k != "seed"] + axes
    for r in rows:
        groups.setdefault(tuple(freeze_value(r.get(k)) for k in keys), []).append(r)
    out = []
    for gkey, rs in groups.items():
        s: dict[str, Any] = dict(zip(keys, gkey))
        s["n_seeds"] = len(rs)
        s["n_reached_target"] = sum(r.get("steps_to_target") is not None for r in rs)
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


def write_results(out: Path, rows: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write ``results.csv`` (rows) and ``summary.csv`` (``summarize(rows)``) atomically."""
    csv_path, summary_path = out / RESULTS_CSV, out / SUMMARY_CSV
    _write_csv(csv_path, rows)
    _write_csv(summary_path, summarize(rows))
    return csv_path, summary_path
