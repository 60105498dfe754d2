"""Training K runs as one program: ``train_ensemble(models, task, configs) -> results``.

Each member is a run of :func:`mimetic.train.train` with its own ``TrainConfig``: the same
batches (its seed stream), loss, gradient clipping, AdamW state and learning-rate schedule,
evaluations, early stop, checkpoints, ``metrics.jsonl`` and ``result.json`` in its own
``out_dir`` (in ``train()``'s format: a member's checkpoint resumes in ``train()`` and back).
What the members share is the program: one :class:`EnsembleLM` forward/backward and one
:class:`StackedAdamW` step a training step.

Host work per step is nil on CUDA: batches are drawn on the CPU a chunk of steps ahead (a
background thread, overlapping the GPU) and copied to the device in one transfer a chunk;
the learning-rate factors of every step sit in a device table; the whole step (forward,
masked loss, backward, clipping, AdamW) is captured once as a CUDA graph and replayed, and
reads its batch and factors through device-side step counters. Losses and gradient norms
go to a device log that is read back only at evaluation/checkpoint steps, where non-finite
values are caught: the member whose loss or gradient norm turned non-finite stops with a
:class:`NonFiniteLossError` naming the first bad step (its newest checkpoint stays the last
good one), and the other members go on (no op mixes members).

On the CPU the same step runs eagerly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._progress import progress_bar
from ..models import MambaLM
from ..models._weights import first_nonfinite
from ..tasks import EvalTally, Task, eval_batches, scored_slots
from ..train.checkpoint import nonfinite_in_state, save_checkpoint
from ..train.config import TrainConfig
from ..train.loop import (
    NonFiniteLossError,
    NonFiniteWeightsError,
    TrainResult,
    _nonfinite_message,
    _nonfinite_weights_message,
    _resolve_device,
    best_record,
    checkpoint_state,
    scored_batch_for_step,
    write_result,
)
from ..train.metrics import MetricsLogger
from ..train.optim import lr_at, wants_decay
from ..train.resume import open_run, run_lock, run_settings
from .model import EnsembleLM
from .optim import StackedAdamW, adamw_factors, clip_stacked_grad_norm_

#: TrainConfig fields that may differ between members; every other field is shared.
PER_MEMBER_FIELDS = ("seed", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "grad_clip",
                     "target_acc", "early_stop", "out_dir")
#: Eager steps before the CUDA graph is captured (kernel compilation, autotuning, allocator).
WARMUP_STEPS = 2
#: Held while a CUDA graph is captured (see ``train_ensemble``).
CAPTURE_LOCK = threading.Lock()
#: Upper bound on the bytes of one chunk of batches held on the device.
CHUNK_BYTES = 256 * 2**20


def shared_config_problems(configs: Sequence[TrainConfig]) -> list[str]:
    """Fields outside ``PER_MEMBER_FIELDS`` on which ``configs`` disagree (empty: one ensemble)."""
    problems = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in PER_MEMBER_FIELDS:
            continue
        values = {json.dumps(getattr(c, f.name), default=str) for c in configs}
        if len(values) > 1:
            problems.append(f.name)
    return problems


@torch.no_grad()
def evaluate_ensemble(ensemble: EnsembleLM, task: Task, num_batches: int, batch_size: int, seed: int,
                      autocast_dtype: torch.dtype | None = None) -> list[dict[str, float]]:
    """:func:`mimetic.tasks.evaluate` of every member at once, on the same held-out batches:
    one ``{"token_acc", "seq_acc", "loss"}`` per member."""
    device = next(ensemble.parameters()).device
    tallies = [EvalTally() for _ in range(ensemble.K)]
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    for input_ids, targets, mask in eval_batches(task, num_batches, batch_size, seed):
        positions, targets, mask = scored_slots(targets, mask, task.max_scored, task.name)
        input_ids, positions = input_ids.to(device), positions.to(device)
        targets, mask = targets.to(device), mask.to(device)
        with ctx:
            logits = ensemble(input_ids[..., None].expand(-1, -1, ensemble.K),
                              positions[..., None].expand(-1, -1, ensemble.K))
        for k, tally in enumerate(tallies):
            tally.add(logits[:, :, k], targets, mask)
    return [t.result() for t in tallies]


def member_losses(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy over its scored positions (fp32), without reading
    the mask on the host: logits (B, P, K, V), targets (B, P, K), mask (B, P, K) -> (K,),
    P the scored slots (``scored_slots``) or every position.

    Unscored logits are replaced by zeros before the cross-entropy (not masked after it), so
    that, as with ``logits[mask]`` in ``train()``, a non-finite unscored logit reaches
    neither the loss nor the gradient (0 * NaN would)."""
    V = logits.shape[-1]
    scored = torch.where(mask[..., None], logits.float(), 0.0)
    ce = F.cross_entropy(scored.reshape(-1, V), targets.reshape(-1), reduction="none").view(mask.shape)
    return torch.where(mask, ce, 0.0).sum((0, 1)) / mask.sum((0, 1))


@dataclass
class _Member:
    """The per-run bookkeeping of ``train()``, for one member."""

    config: TrainConfig
    model: MambaLM
    out: Path | None
    logger: MetricsLogger | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    steps_to_target: int | None = None
    stopped_early: bool = False
    error: Exception | None = None
    done: bool = False
    last_saved: int = -1
    elapsed: float | None = None  # training seconds when it finished (None: still training)
    window_loss: float = 0.0
    window_n: int = 0


class _Batches:
    """Chunks of training batches of every member, stacked on a last model axis and drawn
    on the CPU by ``batch_for_step`` (so a member sees the batches ``train()`` would)."""

    def __init__(self, task: Task, members: list[_Member], threads: int):
        self.task, self.members = task, members
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="mimetic-batches")

    def make(self, start: int, n: int) -> tuple[torch.Tensor, ...]:
        """Steps start .. start+n-1: ids (n, B, L, K) int32, and at the scored slots
        (``scored_slots``, P = ``task.max_scored``) positions and targets (n, B, P, K) int32
        and mask (n, B, P, K) bool."""
        seeds = sorted({m.config.seed for m in self.members})
        cfg = {s: next(m.config for m in self.members if m.config.seed == s) for s in seeds}
        jobs = {(s, t): self.pool.submit(scored_batch_for_step, self.task, cfg[s], t)
                for s in seeds for t in range(start, start + n)}
        out = []
        for i, dtype in enumerate((torch.int32, torch.int32, torch.int32, torch.bool)):
            out.append(torch.stack([
                torch.stack([jobs[(m.config.seed, t)].result()[i] for m in self.members], dim=-1)
                for t in range(start, start + n)]).to(dtype))
        return tuple(out)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def train_ensemble(models: Sequence[MambaLM], task: Task, configs: Sequence[TrainConfig],
                   *, cuda_graph: bool | None = None) -> list[TrainResult | Exception]:
    """Train ``models[k]`` with ``configs[k]`` for every k, as one ensemble; returns per
    member its ``TrainResult`` (as ``train()`` would) or the exception that stopped it
    (``NonFiniteLossError``). Models must share their shape (``EnsembleLM``); configs may
    differ only in ``PER_MEMBER_FIELDS``. Members finished before (``resume`` and a
    ``result.json``) return their stored result and train nothing; the others must resume
    from the same step. ``cuda_graph``: None = the configs' ``cuda_graph`` (whose None is: on
    when training on CUDA). Each model ends
    holding its member's final weights (those of its stop step when it stopped early; a
    member that diverged holds those of its newest checkpoint, or its initial ones).
    """
    if len(models) != len(configs) or not models:
        raise ValueError(f"need one config per model, got {len(models)} models and {len(configs)} configs")
    _check_members(models, task, configs)
    problems = shared_config_problems(configs)
    if problems:
        raise ValueError(f"ensemble members must share TrainConfig fields {problems}")
    with contextlib.ExitStack() as locks:  # one run per output folder (train.resume.run_lock)
        for cfg in configs:
            locks.enter_context(run_lock(cfg.out_dir))
        return _train_ensemble(models, task, configs, cuda_graph)


def _check_members(models: Sequence[MambaLM], task: Task, configs: Sequence[TrainConfig]) -> None:
    """Kinds, and what would make two members one: the same model object (or shared
    parameters: both would train the same weights) or the same output folder (one lock per
    folder is re-entrant within this thread, so it would not stop them overwriting each
    other's checkpoints and metrics)."""
    if not isinstance(task, Task):
        raise TypeError(f"train_ensemble: task must be a mimetic.tasks.Task (make_task), got {type(task).__name__}")
    for k, (model, cfg) in enumerate(zip(models, configs)):
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"train_ensemble: configs[{k}] must be a TrainConfig, got {type(cfg).__name__}")
        if not isinstance(model, MambaLM):
            raise TypeError(f"train_ensemble: models[{k}] must be a MambaLM, got {type(model).__name__}")
        if model.config.vocab_size < task.vocab_size:
            raise ValueError(f"train_ensemble: models[{k}] has vocab_size {model.config.vocab_size}, "
                             f"the task needs {task.vocab_size}")
    seen: dict[int, int] = {}
    for k, model in enumerate(models):
        for p in model.parameters():
            j = seen.setdefault(id(p), k)
            if j != k:
                raise ValueError(f"train_ensemble: models[{j}] and models[{k}] share parameters "
                                 "(the same model twice?); each member needs its own model")
    dirs: dict[str, int] = {}
    for k, cfg in enumerate(configs):
        if cfg.out_dir is None:
            continue
        key = str(Path(cfg.out_dir).resolve())
        j = dirs.setdefault(key, k)
        if j != k:
            raise ValueError(f"train_ensemble: configs[{j}] and configs[{k}] both write to out_dir={cfg.out_dir!r}; "
                             "each member needs its own folder")


def _train_ensemble(models: Sequence[MambaLM], task: Task, configs: Sequence[TrainConfig],
                    cuda_graph: bool | None) -> list[TrainResult | Exception]:
    base = configs[0]
    device = _resolve_device(base)
    use_amp = base.amp if base.amp is not None else device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp else None
    if cuda_graph is None:  # the configs' setting (shared by every member): None = on when on CUDA
        cuda_graph = base.cuda_graph
    graph_on = (device.type == "cuda") if cuda_graph is None else cuda_graph
    if graph_on and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, but training runs on {device}")

    results: list[TrainResult | Exception | None] = [None] * len(models)
    members: list[_Member] = []
    slots: list[int] = []
    states: list[dict[str, Any] | None] = []
    for i, (model, cfg) in enumerate(zip(models, configs)):
        out = Path(cfg.out_dir) if cfg.out_dir is not None else None
        model.to(device)
        kind, found = open_run(out, cfg, task, model, device)  # loads the weights it resumes from
        if kind == "finished":
            results[i] = TrainResult.from_dict(found)
            continue
        members.append(_Member(cfg, model, out))
        slots.append(i)
        states.append(found if kind == "resume" else None)
    if not members:
        return results  # type: ignore[return-value]

    # Resume: every member from its newest good checkpoint, all at one step.
    start_steps = {0 if s is None else s["step"] for s in states}
    if len(start_steps) > 1:
        raise ValueError(f"ensemble members resume from different steps {sorted(start_steps)}; "
                         "train them in separate ensembles")
    step = start_steps.pop()
    step0 = step  # the weights were finite here (loaded checkpoints are checked)
    elapsed = max((s["elapsed"] for s in states if s is not None), default=0.0)
    tokens_done = {id(m): (s["tokens"] if s else 0) for m, s in zip(members, states)}

    ensemble = EnsembleLM([m.model for m in members]).to(device)
    named = ensemble.named_stacked()
    decay = {n for n, p in members[0].model.named_parameters() if wants_decay(n, p)}
    opt = StackedAdamW(named, decay, base.betas, base.eps)
    for k, (m, s) in enumerate(zip(members, states)):
        m.logger = MetricsLogger(m.out, tensorboard=m.config.tensorboard, fresh=s is None)
        m.logger.truncate_after(step)
        if s is not None:
            opt.steps_done = opt.load_member_state_dict(k, m.model, s["optimizer"])
            m.history, m.steps_to_target = s["history"], s["steps_to_target"]
            m.last_saved = step

    K, steps = len(members), base.steps
    factors = torch.stack([
        adamw_factors([lr_at(t, m.config) for m in members], [m.config.weight_decay for m in members],
                      base.betas[0], base.betas[1], t + 1)
        for t in range(steps)]).to(device)                                     # (steps, 3, K)
    max_norm = torch.tensor([m.config.grad_clip if m.config.grad_clip is not None else float("inf")
                             for m in members], device=device)
    params = [p for _, p in named]
    ckpt_every = base.checkpoint_every or base.eval_every
    eval_bs = base.eval_batch_size or base.batch_size
    tokens_per_step = base.batch_size * task.seq_len
    n_slots = task.max_scored
    bytes_per_step = base.batch_size * K * (4 * task.seq_len + 9 * n_slots)
    chunk_cap = max(1, min(base.eval_every, CHUNK_BYTES // bytes_per_step))

    step_t = torch.full((1,), step, dtype=torch.long, device=device)
    pos_t = torch.zeros(1, dtype=torch.long, device=device)
    buf_ids = torch.zeros(chunk_cap, base.batch_size, task.seq_len, K, dtype=torch.int32, device=device)
    slot_shape = (chunk_cap, base.batch_size, n_slots, K)
    buf_pos = torch.zeros(slot_shape, dtype=torch.int32, device=device)
    buf_tgt = torch.zeros(slot_shape, dtype=torch.int32, device=device)
    buf_mask = torch.zeros(slot_shape, dtype=torch.bool, device=device)
    log = torch.zeros(chunk_cap, 2, K, device=device)                        # loss, grad norm
    ctx = (lambda: torch.autocast(device.type, dtype=amp_dtype, cache_enabled=False)) if amp_dtype \
        else contextlib.nullcontext

    def one_step() -> None:
        ids = buf_ids.index_select(0, pos_t)[0].long()
        positions = buf_pos.index_select(0, pos_t)[0].long()
        tgt = buf_tgt.index_select(0, pos_t)[0].long()
        mask = buf_mask.index_select(0, pos_t)[0]
        for p in params:
            p.grad = None
        with ctx():
            logits = ensemble(ids, positions)
        losses = member_losses(logits, tgt, mask)
        losses.sum().backward()
        gnorm = clip_stacked_grad_norm_(params, max_norm)
        opt.step(factors.index_select(0, step_t)[0])
        log.index_copy_(0, pos_t, torch.stack([losses.detach(), gnorm])[None])
        step_t.add_(1)
        pos_t.add_(1)

    graph: torch.cuda.CUDAGraph | None = None
    eager_steps = 0
    # Warm-up and capture run on the caller's stream, or on a stream of our own when the
    # caller is on the default stream (which cannot be captured). Never a new stream per
    # call: torch.cuda.Stream() hands out the 32 streams of a pool in turn, so streams made
    # by packs in other threads would come back as ours, and their work would join our
    # capture (the runner gives each of its threads a stream of its own, see
    # sweep/packed.py).
    caller = torch.cuda.current_stream(device) if graph_on else None
    work = None if caller is None else (
        torch.cuda.Stream(device) if caller == torch.cuda.default_stream(device) else caller)

    def on_work_stream(fn) -> None:
        if work == caller:
            fn()
            return
        work.wait_stream(caller)
        with torch.cuda.stream(work):
            fn()
        caller.wait_stream(work)

    def capture() -> None:
        nonlocal graph
        for p in params:
            p.grad = None
        graph = torch.cuda.CUDAGraph()
        # Packs of a sweep capture and replay in threads of one process (sweep/runner.py):
        # one capture at a time (entering a capture syncs the device, which a capture in
        # another thread does not permit), and thread_local so that the other threads'
        # replays go on meanwhile.
        with CAPTURE_LOCK, torch.cuda.graph(graph, stream=work, capture_error_mode="thread_local"):
            one_step()

    def run(n: int) -> None:
        nonlocal eager_steps
        for _ in range(n):
            if graph is not None:
                graph.replay()
            elif not graph_on:
                one_step()
            elif eager_steps < WARMUP_STEPS:
                on_work_stream(one_step)
                eager_steps += 1
            else:
                on_work_stream(capture)
                graph.replay()

    def save(m: _Member, k: int, at_step: int) -> bool:
        """Write member ``k``'s checkpoint; False (and ``m.error`` set) if its weights or
        optimizer state hold NaN/inf: nothing written, ``m.model`` keeps its last saved weights."""
        if m.out is None or at_step == m.last_saved:
            return True
        opt.steps_done = at_step  # graph replays run no Python: the counter is the step
        state = checkpoint_state(
            at_step, opt.member_state_dict(k, m.model, lr_at(max(at_step - 1, 0), m.config), m.config.weight_decay),
            m.config, elapsed, tokens_done[id(m)], m.history, m.steps_to_target,
            run_settings(m.config, task, m.model))
        # Checked in the stacked slot, before it is written into the member's model (one
        # host read: the save point reads the device anyway), as train() checks its model.
        bad = first_nonfinite((name, ensemble.p(name)[k]) for name in ensemble.names)
        bad = f"tensor {bad}" if bad is not None else nonfinite_in_state(state)
        if bad is not None:
            m.error = NonFiniteWeightsError(_nonfinite_weights_message(bad, at_step, max(m.last_saved, step0), m.out))
            m.done, m.elapsed = True, elapsed
            return False
        ensemble.write_member(k, m.model)
        save_checkpoint(m.out, at_step, m.model, state, keep=m.config.keep_checkpoints, check_finite=False)
        m.last_saved = at_step
        return True

    batches = _Batches(task, members, threads=min(8, torch.get_num_threads()))
    prefetch = ThreadPoolExecutor(1, thread_name_prefix="mimetic-prefetch")
    pbar = progress_bar(total=steps, initial=step, enabled=base.progress, desc=f"{task.name} x{K}", leave=False)
    interrupted = False
    window_time, window_tokens = 0.0, 0
    stops = {steps} | set(range(base.eval_every, steps, base.eval_every)) | set(range(ckpt_every, steps, ckpt_every))
    if base.interrupt_after is not None:  # train() stops after at least one step, also on resume
        stops.add(max(base.interrupt_after, step + 1))
    plan = chunk_plan(step, steps, stops, chunk_cap)
    try:
        pending = prefetch.submit(batches.make, *plan[0][:2]) if plan else None
        t0, start = time.perf_counter(), step
        for idx, (first, n, readback) in enumerate(plan):
            chunk = pending.result()
            for buf, part in zip((buf_ids, buf_pos, buf_tgt, buf_mask), chunk):
                buf[:n].copy_(part)
            pos_t.zero_()
            run(n)
            # Draw the next chunk on the CPU while the GPU trains on this one.
            pending = prefetch.submit(batches.make, *plan[idx + 1][:2]) if idx + 1 < len(plan) else None
            _read_log(log, n, start_of=first, members=members)  # waits for the chunk's steps
            step = first + n
            if not readback:
                continue
            dt = time.perf_counter() - t0
            elapsed += dt
            window_time += dt
            window_tokens += (step - start) * tokens_per_step
            for m in members:
                if not m.done:
                    tokens_done[id(m)] += (step - start) * tokens_per_step
            pbar.update(step - start)

            for m in members:
                if m.error is not None and not m.done:
                    m.done, m.elapsed = True, elapsed
            if step % base.eval_every == 0 or step == steps:
                live = [k for k, m in enumerate(members) if not m.done]
                metrics = evaluate_ensemble(ensemble, task, base.eval_batches, eval_bs, base.eval_seed, amp_dtype)
                for k in live:
                    m = members[k]
                    record = {
                        "step": step, "loss": metrics[k]["loss"], "token_acc": metrics[k]["token_acc"],
                        "seq_acc": metrics[k]["seq_acc"], "train_loss": m.window_loss / max(m.window_n, 1),
                        "lr": lr_at(step - 1, m.config), "tokens_per_s": window_tokens / max(window_time, 1e-9),
                        "elapsed": elapsed,
                    }
                    m.window_loss, m.window_n = 0.0, 0
                    m.history.append(record)
                    m.logger.log(record)
                    tgt = m.config.target_acc
                    if tgt is not None and m.steps_to_target is None and record["token_acc"] >= tgt:
                        m.steps_to_target = step
                        m.stopped_early = m.config.early_stop and step < steps
                window_time, window_tokens = 0.0, 0
                if base.progress:
                    best = max(metrics[k]["token_acc"] for k in live) if live else float("nan")
                    pbar.write(f"[{task.name} x{K}] step {step}: best token_acc {best:.4f}")
            for k, m in enumerate(members):
                if m.done:
                    continue
                if (m.stopped_early or step == steps or step % ckpt_every == 0) and not save(m, k, step):
                    continue
                if m.stopped_early or step == steps:
                    m.done, m.elapsed = True, elapsed
                    ensemble.write_member(k, m.model)  # its final weights; the slot trains on
            if base.interrupt_after is not None and step >= base.interrupt_after and step < steps:
                for k, m in enumerate(members):
                    if not m.done:
                        save(m, k, step)
                interrupted = True
                break
            if all(m.done for m in members):
                break
            t0, start = time.perf_counter(), step
    finally:
        if graph is not None:
            with CAPTURE_LOCK:  # free it now, not at interpreter exit (after CUDA's teardown)
                graph.reset()
        pbar.close()
        prefetch.shutdown(wait=False, cancel_futures=True)
        batches.close()
        for m in members:
            if m.logger is not None:
                m.logger.close()

    for k, (i, m) in enumerate(zip(slots, members)):
        if not m.done:  # interrupted: the weights it stopped with
            ensemble.write_member(k, m.model)
        if m.error is not None:  # its model holds its newest checkpoint's weights (see save)
            results[i] = m.error
            continue
        result = TrainResult(
            step=m.history[-1]["step"] if (m.stopped_early and m.history) else step,
            final=m.history[-1] if m.history else None, best=best_record(m.history),
            steps_to_target=m.steps_to_target, stopped_early=m.stopped_early,
            interrupted=interrupted and not m.done, elapsed=m.elapsed if m.elapsed is not None else elapsed,
            tokens=tokens_done[id(m)], n_params=sum(p.numel() for p in m.model.parameters()),
            history=m.history)
        if m.out is not None and not result.interrupted:
            write_result(m.out, result)
        results[i] = result
    return results  # type: ignore[return-value]


def chunk_plan(step: int, steps: int, stops: set[int], chunk_cap: int) -> list[tuple[int, int, bool]]:
    """The steps ``step .. steps-1`` as chunks (first step, length, ends at a read-back):
    cut at every step of ``stops`` (evaluations, checkpoints, the interrupt) and into
    pieces of at most ``chunk_cap`` steps (the device buffer)."""
    plan = []
    for stop in sorted(t for t in stops if step < t <= steps):
        while step < stop:
            n = min(chunk_cap, stop - step)
            plan.append((step, n, step + n == stop))
            step += n
    return plan


def _read_log(log: torch.Tensor, n: int, start_of: int, members: list[_Member]) -> None:
    """Fold the device log of steps ``start_of .. start_of+n-1`` into the members' windows
    and stop the first member whose loss (or clipped gradient norm) is non-finite there."""
    values = log[:n].cpu()                                                       # (n, 2, K)
    for k, m in enumerate(members):
        if m.done or m.error is not None:
            continue
        loss, gnorm = values[:, 0, k], values[:, 1, k]
        bad_loss = ~torch.isfinite(loss)
        bad_norm = ~torch.isfinite(gnorm) if m.config.grad_clip is not None else torch.zeros_like(bad_loss)
        bad = bad_loss | bad_norm
        if bool(bad.any()):
            j = int(bad.nonzero()[0])
            what, value = ("loss", float(loss[j])) if bad_loss[j] else ("gradient norm", float(gnorm[j]))
            m.error = NonFiniteLossError(_nonfinite_message(what, value, start_of + j, m.out))
            m.window_loss += float(loss[:j].sum())
            m.window_n += j
            continue
        m.window_loss += float(loss.sum())
        m.window_n += n
