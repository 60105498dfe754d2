"""Packing grid points into ensembles: points of one shape train together as one program.

Points whose models, tasks and training settings agree except in what an ensemble member may
own (seed, init and its knobs, lr, weight decay and the other
``mimetic.ensemble.train.PER_MEMBER_FIELDS``) form a group; a group is split into packs of
as many members as fit the device (:func:`pack_capacity` measures it), and each pack is one
:func:`~mimetic.ensemble.train_ensemble` call. A pack's rows are the rows one-at-a-time
runs give (same files in each run folder, same columns), plus ``error`` for a member that
diverged (the others finish).
"""
from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ...ensemble.model import EnsembleLM, ensemble_problem, shape_signature
from ...ensemble.train import PER_MEMBER_FIELDS, member_losses, train_ensemble
from ...layer_kinds import ATTENTION
from ...models import MambaLM
from ...tasks import derive_seed
from ..checkpoint import list_checkpoints
from ..config import TrainConfig
from ..loop import RESULT_FILE, scored_batch_for_step
from .config import GridPoint, SweepConfig, mamba_config
from .rows import length_evals, result_row, write_row

#: Most members in one pack: beyond this the ops are large enough to fill the GPU.
MAX_PACK = 64
#: Largest pack size tried on the CPU (:func:`cpu_pack_capacity`).
MAX_PACK_CPU = 16
#: Share of the free device memory a pack may plan to use.
MEMORY_SHARE = 0.6
#: Held while a model is initialised from the global RNG.
INIT_LOCK = threading.Lock()


def _resume_step(run_dir: Path) -> int | str:
    """Where a point's run stands: "done" (result.json), its newest checkpoint step, or 0."""
    if (run_dir / RESULT_FILE).exists():
        return "done"
    found = list_checkpoints(run_dir)
    return found[-1][0] if found else 0


def group_key(cfg: SweepConfig, point: GridPoint, run_dir: Path) -> str:
    """Points with equal keys can share an ensemble: same task, model shape, shared training
    settings and resume step."""
    task = cfg.task_for(point)
    mcfg = mamba_config(cfg.model_for(point), task.vocab_size, point, *cfg.init_for(point))
    train = {k: v for k, v in cfg.train_for(point).items() if k not in PER_MEMBER_FIELDS}
    return json.dumps([task.to_dict(), shape_signature(mcfg), train, _resume_step(run_dir)],
                      sort_keys=True, default=str)


def point_cost(cfg: SweepConfig, point: GridPoint, run_dir: Path) -> int:
    """A relative estimate of the work left in ``point``'s run, from its config alone (no
    measurement; it only orders the runs): steps left x batch_size x seq_len x n_layer x
    d_model x (d_model + m), the multiply-adds of a layer's projections (~ d_model^2 a token)
    and of its sequence mixing, m = d_state for an SSM or linear-attention layer (its state),
    seq_len for softmax attention (its scores). 0 for a run that has finished training."""
    at = _resume_step(run_dir)
    if at == "done":
        return 0
    task = cfg.task_for(point)
    tcfg = TrainConfig(**cfg.train_for(point))
    mcfg = mamba_config(cfg.model_for(point), task.vocab_size, point, *cfg.init_for(point))
    mixing = task.seq_len if point.layer == ATTENTION else (point.d_state or 0)
    return (max(0, tcfg.steps - at) * tcfg.batch_size * task.seq_len * mcfg.n_layer * mcfg.d_model
            * (mcfg.d_model + mixing))


def by_cost(cfg: SweepConfig, points: list[GridPoint], runs: Path) -> list[GridPoint]:
    """``points`` cheapest first (:func:`point_cost`), and among equally costly ones by the
    position of their seed in ``grid.seed`` (then in file order): a sweep cut short by a time
    limit leaves the most finished runs, and every cell of the grid with its first seeds
    rather than a few cells with all of theirs. A run's cost does not depend on the others,
    so this order changes no result, only which rows exist first."""
    seed_rank = {s: i for i, s in enumerate(cfg.grid["seed"])}
    cost = {p: point_cost(cfg, p, runs / p.run_id) for p in points}
    return sorted(points, key=lambda p: (cost[p], seed_rank.get(p.seed, len(seed_rank))))


def pack_points(cfg: SweepConfig, points: list[GridPoint], runs: Path,
                capacity: int | None = None, device: str | None = None,
                concurrent: int = 1) -> list[list[GridPoint]]:
    """``points`` grouped by :func:`group_key` and split into packs of at most ``capacity``
    members (None: :func:`pack_capacity` of each group on ``device``, sharing the memory among
    ``concurrent`` packs at once), in :func:`by_cost` order: groups cheapest per member first
    (the weighted-shortest-job-first order, which finishes the most runs by any time when a
    pack's cost grows with its members), the members of a group seed by seed, so that
    when a group is split each pack holds some seeds of every init and lr rather than all
    seeds of a few."""
    groups: dict[str, list[GridPoint]] = {}
    for p in by_cost(cfg, points, runs):
        groups.setdefault(group_key(cfg, p, runs / p.run_id), []).append(p)
    packs = []
    for members in groups.values():
        size = (capacity if capacity is not None
                else pack_capacity(cfg, members[0], device, concurrent, most=len(members)))
        packs += [members[i:i + size] for i in range(0, len(members), size)]
    return packs


def _device(device: str | None) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def _probe_step(model: MambaLM, task, tcfg: TrainConfig, members: int, dev: torch.device):
    """A ``members``-model ensemble of ``model``'s shape on ``dev`` and a function that runs one
    forward + loss + backward of it at the real batch shape (every member on the step-0
    batch), as a pack's step runs it (bf16 autocast on CUDA). The members are copies of
    ``model``: the weights do not change the cost, and one initialisation is cheaper than k."""
    ensemble = EnsembleLM([model] * members).to(dev)
    ids, positions, targets, mask = (torch.stack([t] * members, dim=-1).to(dev)
                                     for t in scored_batch_for_step(task, tcfg, 0))

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = ensemble(ids, positions)
        member_losses(logits, targets, mask).sum().backward()
    return step


def pack_capacity(cfg: SweepConfig, point: GridPoint, device: str | None = None, concurrent: int = 1,
                  most: int | None = None) -> int:
    """How many members of ``point``'s shape one pack should hold on ``device`` (at most
    ``most``, e.g. the size of the group). On CUDA, as many as fit: measured as the peak
    memory of one training step of a 2-member ensemble at the real batch shape (parameters,
    gradients, AdamW state, activations), scaled into ``MEMORY_SHARE`` of the free memory
    divided among ``concurrent`` packs (at most ``MAX_PACK``). On the CPU, the fastest per
    member: :func:`cpu_pack_capacity`. 1 for a model an ensemble cannot hold."""
    most = MAX_PACK if most is None else max(1, min(most, MAX_PACK))
    if most == 1:  # nothing to decide: no model build, no probe step
        return 1
    dev = _device(device)
    task = cfg.task_for(point)
    tcfg = TrainConfig(**cfg.train_for(point))
    mcfg = mamba_config(cfg.model_for(point), task.vocab_size, point, *cfg.init_for(point))
    model = MambaLM(mcfg)
    if ensemble_problem(model) is not None:  # run_pack trains these one at a time
        return 1
    if dev.type != "cuda":
        return cpu_pack_capacity(lambda k: _probe_step(model, task, tcfg, k, dev), min(most, MAX_PACK_CPU))
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    # The AdamW moments of 2 members, which the probe step does not allocate.
    moments = [torch.zeros(2, *p.shape, device=dev) for p in model.parameters() for _ in range(2)]
    _probe_step(model, task, tcfg, 2, dev)()
    torch.cuda.synchronize(dev)
    per_member = (torch.cuda.max_memory_allocated(dev) - base) / 2
    del moments
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(dev)
    return int(max(1, min(most, MEMORY_SHARE * free / max(1, concurrent) // max(per_member, 1))))


def cpu_pack_capacity(make_step: Callable[[int], Callable[[], None]], most: int, repeats: int = 2) -> int:
    """The pack size, at most ``most``, whose training step takes the least time per member on
    the CPU, measured: ``make_step(k)`` builds a k-member pack and returns its step, timed for
    k = 1, 2, 4, ... (the best of ``repeats`` steps, after one untimed step: first-touch
    allocations).

    Unlike on a GPU, a bigger pack is not always cheaper per member here: packing saves the
    per-op overhead, which dominates tiny models, but past a size its tensors outgrow the
    caches and the allocator's reuse (a fresh allocation of tens of MB is paid in page faults):
    a d_model-64 copy model runs 4x slower per member in a pack of 10 than alone. The
    doubling stops at the first size slower per member than the best so far.
    """
    best_k, best = 1, float("inf")
    k = 1
    while k <= most:
        step = make_step(k)
        step()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        per_member = min(times) / k
        if per_member >= best:
            break
        best_k, best = k, per_member
        k *= 2
    return best_k


#: torch.cuda.Stream() takes its streams from a pool of this many per device and priority,
#: in turn: more threads than this would share streams.
STREAM_POOL = 32


class StreamLease:
    """One CUDA stream per worker thread, made once and lent to one pack at a time.

    Why not a new stream per pack: torch.cuda.Stream() hands out a pool's streams in turn,
    so after a few packs two threads would share a stream, and one thread's work on a
    stream that another thread is capturing joins that capture (a wrong graph, or CUDA's
    "dependency created on uncaptured work in another stream")."""

    def __init__(self, workers: int, device: str | None = None):
        if workers > STREAM_POOL:
            raise ValueError(f"at most {STREAM_POOL} worker threads on one GPU (torch's stream pool), "
                             f"got workers={workers}")
        self._free = queue.SimpleQueue()
        for _ in range(workers):
            self._free.put(torch.cuda.Stream(_device(device)))

    def run_pack(self, cfg: SweepConfig, points: list[GridPoint], runs: Path,
                 device: str | None = None) -> list[dict[str, Any]]:
        """:func:`run_pack` on a stream of its own, so that packs trained by threads of one
        process overlap on the GPU (small models leave most of it idle)."""
        stream = self._free.get()
        try:
            with torch.cuda.stream(stream):
                return run_pack(cfg, points, runs, device)
        finally:
            self._free.put(stream)


def run_pack(cfg: SweepConfig, points: list[GridPoint], runs: Path, device: str | None = None,
             progress: bool = False) -> list[dict[str, Any]]:
    """Train ``points`` (one pack) as one ensemble in their run folders (resuming from their
    checkpoints) and return their rows, each also written to ``row.json`` as ``run_point``
    does. Each model is initialised under ``torch.manual_seed(derive_seed("init", seed))``,
    as in ``run_point``, so a pack member starts from the weights its lone run would."""
    from .runner import run_point  # runner imports this module

    task = cfg.task_for(points[0])
    models, tcfgs = [], []
    for p in points:
        (runs / p.run_id).mkdir(parents=True, exist_ok=True)
        with INIT_LOCK:  # the global RNG: packs may be built in threads at once
            torch.manual_seed(derive_seed("init", p.seed))
            models.append(MambaLM(mamba_config(cfg.model_for(p), task.vocab_size, p, *cfg.init_for(p))))
        tcfgs.append(cfg.train_config(p, runs / p.run_id, device, progress))
    if ensemble_problem(models[0]) is not None:  # e.g. MLP blocks: one point at a time
        return [run_point(cfg, p, runs / p.run_id, device, progress) for p in points]
    results = train_ensemble(models, task, tcfgs)
    rows = []
    for p, model, tcfg, result in zip(points, models, tcfgs, results):
        if isinstance(result, Exception):
            row: dict[str, Any] = {**p.to_dict(), "seq_len": task.seq_len, "error": str(result)}
        else:
            row = result_row(p, task, result)
            row.update(length_evals(cfg, model, task, tcfg))
        write_row(runs / p.run_id, row)
        rows.append(row)
    return rows
