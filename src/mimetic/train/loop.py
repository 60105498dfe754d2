"""The training loop: ``train(model, task, config) -> TrainResult``."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._progress import progress_bar
from ..models import MambaLM
from ..tasks import Task, evaluate, make_generator, model_logits, scored_slots
from .checkpoint import latest_checkpoint, nonfinite_in_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .distributed import is_main_process, parallel_for
from .metrics import MetricsLogger
from .optim import build_optimizer, lr_at
from .resume import open_run, run_lock, run_settings

#: Seed-stream tag of training batches (evaluation uses ``mimetic.tasks.EVAL_STREAM``).
TRAIN_STREAM = "train"
RESULT_FILE = "result.json"


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss (or gradient norm) is NaN/inf; the message names the step."""


class NonFiniteWeightsError(NonFiniteLossError):
    """Raised at a checkpoint when the weights (or optimizer state) hold NaN/inf although the
    losses were finite; nothing is saved, and the message names the tensor and the steps in
    which it turned non-finite (after the last checkpoint that was checked finite)."""


@dataclass
class TrainResult:
    """What a finished (or interrupted) ``train`` call returns.

    ``final``/``best``: the last eval record and the one with the highest token accuracy
    (keys: step, loss, token_acc, seq_acc, train_loss, lr, tokens_per_s, elapsed);
    ``steps_to_target``: first eval step with token_acc >= target_acc (None if never or no
    target); ``history``: every eval record.
    """

    step: int
    final: dict[str, Any] | None
    best: dict[str, Any] | None
    steps_to_target: int | None
    stopped_early: bool
    interrupted: bool
    elapsed: float
    tokens: int
    n_params: int
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainResult:
        return cls(**d)


def batch_for_step(task: Task, config: TrainConfig, step: int) -> tuple[torch.Tensor, ...]:
    """The training batch of ``step``: a pure function of (task, config.seed, step)."""
    return task.batch(config.batch_size, make_generator(TRAIN_STREAM, config.seed, step))


def heads_at_scored(model: torch.nn.Module, task: Task) -> bool:
    """Whether ``model`` computes its LM head only at ``task``'s scored positions, in training
    and evaluation: a MambaLM does when the task scores fewer positions than its length (MQAR:
    4 of 64, at vocabulary 8192); other models give logits everywhere, masked after."""
    return isinstance(model, MambaLM) and task.max_scored < task.seq_len


def scored_batch_for_step(task: Task, config: TrainConfig, step: int) -> tuple[torch.Tensor, ...]:
    """:func:`batch_for_step` with the targets and mask at the scored slots, for a head that
    runs only there: input_ids (B, L), positions, targets (B, P) long, mask (B, P) bool, P =
    ``task.max_scored`` (:func:`mimetic.tasks.scored_slots`)."""
    ids, targets, mask = batch_for_step(task, config, step)
    return (ids, *scored_slots(targets, mask, task.max_scored, task.name))


def masked_loss_and_acc(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    """Mean cross-entropy over scored positions (fp32) and the token accuracy there.

    logits (B, L, V), targets (B, L) long, mask (B, L) bool -> (loss scalar, acc scalar tensor).
    """
    scored_logits = logits[mask].float()
    scored_targets = targets[mask]
    loss = F.cross_entropy(scored_logits, scored_targets)
    acc = (scored_logits.argmax(-1) == scored_targets).float().mean()
    return loss, acc


def checkpoint_state(step: int, optimizer_state: dict, config: TrainConfig, elapsed: float, tokens: int,
                     history: list[dict[str, Any]], steps_to_target: int | None,
                     settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``state.pt`` of a training checkpoint after ``step`` steps (weights_only-loadable);
    ``settings``: ``resume.run_settings`` of the run, checked when it resumes."""
    return {
        "format": 1,
        "step": step,
        "optimizer": optimizer_state,
        "scheduler": {"kind": "warmup_cosine", "step": step},
        "rng": rng_state(),
        "data": {"stream": TRAIN_STREAM, "seed": config.seed, "next_step": step},
        "elapsed": elapsed,
        "tokens": tokens,
        "history": history,
        "steps_to_target": steps_to_target,
        "config": config.to_dict(),
        **({"settings": settings} if settings is not None else {}),
    }


def write_result(out: Path, result: TrainResult) -> None:
    """Atomically write ``result.json`` (marks the run in ``out`` finished)."""
    tmp = out / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=1))
    os.replace(tmp, out / RESULT_FILE)


def best_record(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The eval record with the highest token accuracy (then sequence accuracy, then earliest)."""
    return max(history, key=lambda r: (r["token_acc"], r["seq_acc"], -r["step"])) if history else None


def _use_graph_path(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> bool:
    """Whether ``train`` hands the run to the CUDA-graph ensemble path (``config.cuda_graph``)."""
    if config.cuda_graph is False:
        return False
    from ..ensemble.model import ensemble_problem

    problem = "training runs on the CPU" if device.type != "cuda" else ensemble_problem(model)
    if problem is not None and config.cuda_graph:
        raise ValueError(f"cuda_graph=True, but {problem}")
    return problem is None


def _resolve_device(config: TrainConfig) -> torch.device:
    if config.device is not None:
        return torch.device(config.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train(model: torch.nn.Module, task: Task, config: TrainConfig) -> TrainResult:
    """Train ``model`` on ``task`` with ``config``; see ``TrainConfig`` for every behaviour.

    ``model(input_ids (B, L) long) -> logits (B, L, V)`` (V >= task.vocab_size). The model is
    moved to the device and trained in place. Reproducible: the same model init, task and
    config give the same losses; an interrupted run resumed with ``resume=True`` ends with the
    same parameters as an uninterrupted one (same batches, optimizer state and RNG).

    With ``resume=True`` on a finished run (``result.json`` in ``out_dir``), nothing is
    trained: the final checkpoint is loaded into ``model`` and the stored result returned;
    with more ``steps`` than it finished, it trains on from its final checkpoint.

    Raises ``NonFiniteLossError`` naming the step if the loss or gradient norm is NaN/inf;
    parameters are not updated by that step and the newest checkpoint on disk stays the last
    good one. Raises ``NonFiniteWeightsError`` (a ``NonFiniteLossError``) at a checkpoint
    whose weights or optimizer state hold NaN/inf while the losses were finite, naming the
    tensor and the steps since the last checkpoint; nothing is saved, the newest checkpoint
    on disk stays the last good one. Raises ValueError if ``out_dir`` already holds checkpoints and ``resume`` is off,
    or if resuming with settings other than the checkpoint's (``mimetic.train.resume``);
    ``RunLockedError`` if another run is using ``out_dir``.

    Under ``torchrun`` with several processes it trains data-parallel (DDP, or FSDP2 with
    ``parallel="fsdp"``) with the same global batch, rank 0 writing the files; see
    ``mimetic.train.distributed``.
    """
    _check_train_args(model, task, config)
    # One lock per run: the ranks of a torchrun job are one run (rank 0 holds it).
    with run_lock(config.out_dir if is_main_process() else None):
        return _train(model, task, config)


def _check_train_args(model: Any, task: Any, config: Any) -> None:
    """What ``train`` is given, checked before anything runs or is written."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train: config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(task, Task):
        raise TypeError(f"train: task must be a mimetic.tasks.Task (make_task), got {type(task).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"train: model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("train: the model has no trainable parameters")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and vocab < task.vocab_size:
        raise ValueError(f"train: the model's vocab_size={vocab} is smaller than the {task.name} task's "
                         f"vocab_size={task.vocab_size} (build the model with vocab_size=task.vocab_size)")


def check_logits(logits: torch.Tensor, input_ids: torch.Tensor, vocab_size: int) -> None:
    """The model's output fits the task: (B, L, V >= vocab_size) floats for ids (B, L)
    (shapes only: no device read)."""
    if (not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != input_ids.shape
            or logits.shape[-1] < vocab_size or not logits.is_floating_point()):
        got = (f"{logits.dtype} {tuple(logits.shape)}" if isinstance(logits, torch.Tensor)
               else type(logits).__name__)
        raise ValueError(f"train: the model must map input_ids {tuple(input_ids.shape)} to float logits "
                         f"(batch, length, V) with V >= the task's vocab_size {vocab_size}; got {got}")


def _train(model: torch.nn.Module, task: Task, config: TrainConfig) -> TrainResult:
    par = parallel_for(config, _resolve_device(config))  # one process, or this rank of torchrun's
    device = par.device
    if par.world_size == 1 and _use_graph_path(model, config, device):
        from ..ensemble.train import train_ensemble

        torch.manual_seed(config.seed)  # as below: the global RNG of anything stochastic
        (result,) = train_ensemble([model], task, [config], cuda_graph=True)
        if isinstance(result, Exception):
            raise result
        return result
    use_amp = config.amp if config.amp is not None else device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp else None
    out = Path(config.out_dir) if config.out_dir is not None else None

    par.place(model)  # on the device (FSDP2: where it is, each rank's shards move when sharded)
    kind, found = open_run(out, config, task, model, device)
    if kind == "finished":  # done before: the stored result, the final weights, nothing trained
        return TrainResult.from_dict(found)
    settings = run_settings(config, task, model)
    torch.manual_seed(config.seed)  # global RNG: dropout and anything else stochastic in the model
    n_params = sum(p.numel() for p in model.parameters())
    train_model = par.wrap(model)  # the DDP wrapper, or `model` itself (FSDP2 shards it in place)
    optimizer = build_optimizer(model, config)

    step, elapsed, tokens = 0, 0.0, 0
    history: list[dict[str, Any]] = []
    steps_to_target: int | None = None
    resumed = kind == "resume"
    if resumed:
        state = found
        par.load_optimizer_state(optimizer, state["optimizer"])
        set_rng_state(state["rng"])
        step, elapsed, tokens = state["step"], state["elapsed"], state["tokens"]
        history, steps_to_target = state["history"], state["steps_to_target"]
    logger = MetricsLogger(out if par.is_main else None, tensorboard=config.tensorboard, fresh=not resumed)
    logger.truncate_after(step)

    ckpt_every = config.checkpoint_every or config.eval_every
    eval_bs = config.eval_batch_size or config.batch_size
    last_saved = step if resumed else -1
    start_step = step  # the weights were finite here (loaded checkpoints are checked)
    stopped_early = interrupted = False

    def save(at_step: int) -> None:
        nonlocal last_saved
        if out is None or at_step == last_saved:
            return
        full_model = par.gather_model(model)  # collectives under FSDP2: every rank comes here
        state = checkpoint_state(at_step, par.optimizer_state(optimizer), config, elapsed, tokens, history,
                                 steps_to_target, settings)
        # Weights can turn NaN/inf while the losses stay finite (an unclipped inf gradient
        # in the last step before a checkpoint, a parameter the loss does not see): such a
        # checkpoint would be refused on load, and pruning could drop the last good one.
        bad = par.from_main(nonfinite_in_checkpoint(full_model, state) if par.is_main else None)
        if bad is not None:
            raise NonFiniteWeightsError(_nonfinite_weights_message(bad, at_step, max(last_saved, start_step), out))
        if par.is_main:
            save_checkpoint(out, at_step, full_model, state, keep=config.keep_checkpoints, check_finite=False)
        par.barrier()
        last_saved = at_step

    head_at_scored = heads_at_scored(model, task)
    pbar = progress_bar(total=config.steps, initial=step, enabled=config.progress and par.is_main, desc=task.name,
                leave=False)
    window_tokens, window_time, window_loss, window_n = 0, 0.0, 0.0, 0
    model.train()
    try:
        while step < config.steps:
            t0 = time.perf_counter()
            batch = (scored_batch_for_step if head_at_scored else batch_for_step)(task, config, step)
            input_ids, *rest = (t.to(device, non_blocking=True) for t in par.shard(batch))
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with ctx:
                if head_at_scored:
                    positions, targets, mask = rest
                    logits = train_model(input_ids, positions=positions)
                else:
                    targets, mask = rest
                    logits = model_logits(train_model, input_ids)
            if window_n == 0 and not head_at_scored:  # the first step of each window: shapes only
                check_logits(logits, input_ids, task.vocab_size)
            loss, acc = masked_loss_and_acc(logits, targets, mask)
            loss, loss_value = par.reduce_loss(loss, mask)  # loss_value: of the global batch
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(_nonfinite_message("loss", loss_value, step, out))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                gnorm = par.clip_grad_norm(model.parameters(), config.grad_clip)
                if not torch.isfinite(gnorm):
                    raise NonFiniteLossError(_nonfinite_message("gradient norm", float(gnorm), step, out))
            optimizer.step()
            step += 1

            dt = time.perf_counter() - t0
            elapsed += dt
            n_tok = input_ids.numel() * par.world_size  # the global batch's tokens
            tokens += n_tok
            window_tokens, window_time = window_tokens + n_tok, window_time + dt
            window_loss, window_n = window_loss + loss_value, window_n + 1
            pbar.update(1)
            pbar.set_postfix(loss=f"{loss_value:.3f}", acc=f"{acc.item():.3f}", tok_s=f"{n_tok / max(dt, 1e-9):.0f}")

            if step % config.eval_every == 0 or step == config.steps:
                metrics = evaluate(
                    model, task, num_batches=config.eval_batches, batch_size=eval_bs,
                    seed=config.eval_seed, device=device, autocast_dtype=amp_dtype, at_scored=head_at_scored,
                )
                record = {
                    "step": step,
                    "loss": metrics["loss"],
                    "token_acc": metrics["token_acc"],
                    "seq_acc": metrics["seq_acc"],
                    "train_loss": window_loss / max(window_n, 1),
                    "lr": lr,
                    "tokens_per_s": window_tokens / max(window_time, 1e-9),
                    "elapsed": elapsed,  # training seconds, evaluation time excluded
                }
                window_tokens, window_time, window_loss, window_n = 0, 0.0, 0.0, 0
                history.append(record)
                logger.log(record)
                if config.progress:
                    pbar.write(
                        f"[{task.name}] step {step}: eval loss {record['loss']:.4f} "
                        f"token_acc {record['token_acc']:.4f} seq_acc {record['seq_acc']:.4f}"
                    )
                target = config.target_acc
                if target is not None and steps_to_target is None and record["token_acc"] >= target:
                    steps_to_target = step
                    stopped_early = config.early_stop and step < config.steps

            if stopped_early or step == config.steps or step % ckpt_every == 0:
                save(step)
            if stopped_early:
                break
            if config.interrupt_after is not None and step >= config.interrupt_after and step < config.steps:
                save(step)
                interrupted = True
                break
    finally:
        pbar.close()
        logger.close()

    best = best_record(history)
    result = TrainResult(
        step=step,
        final=history[-1] if history else None,
        best=best,
        steps_to_target=steps_to_target,
        stopped_early=stopped_early,
        interrupted=interrupted,
        elapsed=elapsed,
        tokens=tokens,
        n_params=n_params,
        history=history,
    )
    if out is not None and not interrupted and par.is_main:
        write_result(out, result)
    par.barrier()  # every rank returns once the run's files are complete
    return result


def _last_good(out: Path | None) -> str:
    last = latest_checkpoint(out) if out is not None else None
    return f"; last good checkpoint: {last}" if last is not None else "; no checkpoint saved yet"


def _nonfinite_message(what: str, value: float, step: int, out: Path | None) -> str:
    return f"non-finite {what} ({value}) at step {step}; training stopped{_last_good(out)}"


def _nonfinite_weights_message(what: str, step: int, good_step: int, out: Path | None) -> str:
    """``what``: "tensor <name>" / "optimizer state <name>" (``nonfinite_in_checkpoint``);
    ``good_step``: the last step after which the weights were known finite."""
    steps = f"step {step}" if good_step + 1 == step else f"steps {good_step + 1}-{step}"
    return (f"non-finite values in {what} after step {step} although the losses were finite "
            f"(finite after step {good_step}: they turned non-finite in {steps}); "
            f"training stopped without saving them{_last_good(out)}")
