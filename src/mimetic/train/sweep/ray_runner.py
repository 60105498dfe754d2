"""Sweeps on Ray: every job (a pack of same-shape points, or one point) is one Ray task.

    mimetic sweep experiments/copy_length.toml --ray              # a local Ray instance
    mimetic sweep experiments/copy_length.toml --ray auto         # the cluster this node is in
    mimetic sweep experiments/copy_length.toml --ray ray://head:10001

Ray schedules the tasks over the GPUs of every node; nothing here decides placement.
A task asks for a share of one GPU sized by its pack: a pack of the capacity that
:func:`~mimetic.train.sweep.packed.pack_capacity` measures for its shape (on a GPU of the
cluster) takes a whole GPU, a smaller pack (the tail of a group, a lone point) a quarter,
half or three quarters, so small jobs share a GPU. On a cluster without GPUs the tasks are
CPU tasks with the cores shared out among them.

Results, resume and skipping are the local runner's: the driver skips points whose
``row.json`` exists, each task trains in the point's run folder (resuming its checkpoints),
and a task whose worker dies (killed, preempted node) is retried by Ray, resuming from the
checkpoints the dead one wrote. The output folder must be one that every node sees (local
disk for a local instance, a shared file system for a cluster); the driver also writes each
returned ``row.json`` itself, so finished points are skipped on a re-run either way. Every
node needs this package (and a custom ``model_factory``'s module) importable. An exception
raised inside a task (not a dead worker) is not retried: it ends the sweep, as it does
without Ray.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .config import GridPoint, SweepConfig
from .packed import group_key, pack_capacity, pack_points
from .rows import write_row
from .runner import _worker

#: The smallest GPU share of a task (so at most 1 / MIN_GPU_SHARE tasks share a GPU).
MIN_GPU_SHARE = 0.25
#: Ray retries of a task whose worker process died (not of a Python exception in it).
MAX_RETRIES = 3


class RayJob(NamedTuple):
    """A finished Ray task: its points, their rows, its seconds (training and evaluation in
    the task, worker start-up excluded) and the GPU share it held (0 on the CPU)."""

    points: list[GridPoint]
    rows: list[dict[str, Any]]
    seconds: float
    gpus: float


def import_ray():
    """The ``ray`` module, or a one-line ValueError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray, which is not installed: pip install 'mimetic[ray]'") from None
    return ray


def connect(address: str | bool | None) -> bool:
    """Join Ray: a running session of this process as is, a new local instance for
    ``True``/``"local"``/None, else the cluster at ``address`` (``"auto"``, ``"ray://..."``).
    Returns whether this call started the connection (so the caller shuts it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    local = address in (None, True, "local")
    try:
        ray.init(address=None if local else address, include_dashboard=False if local else None,
                 log_to_driver=False)
    except ConnectionError as e:  # no cluster there: say so in one line
        raise ValueError(f"--ray {address}: cannot reach a Ray cluster ({' '.join(str(e).split())[:200]}); "
                         "start one with `ray start --head`, or pass --ray alone for a local instance") from None
    return True


def gpu_share(members: int, capacity: int) -> float:
    """The GPU share of a job of ``members`` models whose shape fits ``capacity`` on a GPU:
    its fraction of the capacity rounded up to a multiple of ``MIN_GPU_SHARE``."""
    fraction = members / max(1, capacity)
    return min(1.0, max(MIN_GPU_SHARE, math.ceil(fraction / MIN_GPU_SHARE - 1e-9) * MIN_GPU_SHARE))


def plan_jobs(cfg: SweepConfig, todo: list[GridPoint], runs: Path, pack: str | int,
              model_factory: Callable | None, gpus: float) -> tuple[list[tuple[list[GridPoint], float]], bool]:
    """([(points of a job, its GPU share)], packed) for the points ``todo``.

    Packs as ``run_sweep`` makes them, but sized for the cluster's GPUs: with ``pack="auto"``
    each group's capacity is measured by one probe task on a GPU (no GPU: the CPU capacity);
    an int ``pack`` is taken as the models one GPU holds. A custom ``model_factory`` trains
    one point per task on a whole GPU (its memory is unknown).
    """
    ray = import_ray()
    packed = not (pack == "off" or model_factory is not None)
    if packed and (isinstance(pack, bool) or not (pack == "auto" or (isinstance(pack, int) and pack >= 1))):
        raise ValueError(f"pack must be 'auto', 'off' or a positive int, got {pack!r}")
    if model_factory is not None:
        return [([p], 1.0 if gpus else 0.0) for p in todo], False
    # Whole groups first (pack_points with no size limit), then sized per group.
    groups = pack_points(cfg, todo, runs, capacity=len(todo) or 1)
    capacities: dict[str, int] = {}
    probe = ray.remote(num_gpus=1)(_probe_capacity) if gpus else None
    jobs = []
    for group in groups:
        key = group_key(cfg, group[0], runs / group[0].run_id)
        if isinstance(pack, int) and not isinstance(pack, bool):
            capacities[key] = pack
        elif key not in capacities:
            capacities[key] = (ray.get(probe.remote(cfg, group[0])) if probe
                               else pack_capacity(cfg, group[0], "cpu", most=len(group)))
        size = capacities[key] if packed else 1
        for i in range(0, len(group), size):
            members = group[i:i + size]
            jobs.append((members, gpu_share(len(members), capacities[key]) if gpus else 0.0))
    return jobs, packed


def _probe_capacity(cfg: SweepConfig, point: GridPoint) -> int:
    """A Ray task on one GPU: ``pack_capacity`` of ``point``'s shape there (a GPU resource
    without CUDA behind it, as in tests, measures the CPU's)."""
    return pack_capacity(cfg, point, "cuda" if torch.cuda.is_available() else "cpu")


def _job(cfg: SweepConfig, points: list[GridPoint], runs: str, packed: bool, model_factory, threads: int
         ) -> tuple[list[dict[str, Any]], float]:
    """One Ray task: train ``points`` in their run folders; (rows, seconds it took)."""
    start = time.perf_counter()
    # Ray sets CUDA_VISIBLE_DEVICES to the task's GPU: "cuda" is that one; a CPU task trains
    # on the CPU even on a node that has GPUs (they belong to other tasks).
    import ray

    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    if packed:
        # A retried pack whose worker died mid-save can hold members at two checkpoint steps;
        # regrouped by where each stands, each part resumes as one ensemble.
        parts = pack_points(cfg, points, Path(runs), capacity=len(points))
        by_point = {}
        for part in parts:
            by_point.update(zip(part, _worker((cfg, part, runs, device, model_factory, threads, True))))
        rows = [by_point[p] for p in points]
    else:
        rows = _worker((cfg, points, runs, device, model_factory, threads, False))
    if device == "cuda":  # the worker process may serve the next task: leave the GPU's memory to others
        torch.cuda.empty_cache()
    return rows, time.perf_counter() - start


def _node_cpus(ray) -> tuple[int, int]:
    """(cores per GPU on the GPU nodes with the fewest, cores of the largest node): what one
    task can be given without becoming unschedulable."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    per_gpu = [r.get("CPU", 0) / r["GPU"] for r in nodes if r.get("GPU")]
    return max(1, int(min(per_gpu))) if per_gpu else 1, max(1, int(max((r.get("CPU", 1) for r in nodes), default=1)))


def run_on_ray(cfg: SweepConfig, todo: list[GridPoint], runs: Path, *, pack: str | int = "auto",
               model_factory: Callable | None = None, address: str | bool | None = None
               ) -> Iterator[RayJob]:
    """Train the points ``todo`` as Ray tasks; yields a :class:`RayJob` per task as tasks
    finish (in any order). Starts a local Ray instance unless connected or ``address``
    names a cluster, and shuts down what it started when done."""
    ray = import_ray()
    started = connect(address)
    try:
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0.0), int(resources.get("CPU", 1))
        jobs, packed = plan_jobs(cfg, todo, runs, pack, model_factory, gpus)
        if not jobs:
            return
        # CPU tasks share out the cores (at most a node's each); a GPU task gets its share of
        # its node's cores per GPU, as threads for drawing batches ahead of the GPU.
        per_gpu, largest = _node_cpus(ray)
        task = ray.remote(max_retries=MAX_RETRIES)(_job)
        pending = {}
        for points, share in jobs:
            n_cpus = max(1, int(per_gpu * share)) if gpus else min(largest, max(1, cpus // len(jobs)))
            opts = {"num_gpus": share, "num_cpus": n_cpus} if gpus else {"num_cpus": n_cpus}
            ref = task.options(**opts).remote(cfg, points, str(runs), packed, model_factory, n_cpus)
            pending[ref] = (points, share)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            points, share = pending.pop(done[0])
            rows, seconds = ray.get(done[0])
            for p, row in zip(points, rows):  # also here: the run folders may be on another node
                (runs / p.run_id).mkdir(parents=True, exist_ok=True)
                write_row(runs / p.run_id, row)
            yield RayJob(points, rows, seconds, share)
    finally:
        if started:
            ray.shutdown()
