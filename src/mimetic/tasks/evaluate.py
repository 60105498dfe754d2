"""Held-out evaluation of a model on a task: exact-match accuracy per token and per sequence;
copy accuracy per string length (Jelassi et al.'s protocol)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .._validate import int_arg
from .base import Task, make_generator, scored_slots
from .copy import CopyTask
from .copy_jelassi import JelassiCopyTask

#: Tag of the evaluation seed stream. Training batches use the tag "train" (see
#: ``mimetic.train``), so evaluation batches come from a different seed space than any
#: training step of any run seed.
EVAL_STREAM = "eval"


def model_logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """``model(input_ids)`` as a (B, L, V') tensor; also accepts outputs with a ``.logits``
    attribute (``mamba_ssm``/``transformers`` style) or a tuple whose first item is the logits.

    V' may exceed the task's vocabulary (models often pad the vocabulary to a multiple of 8);
    the extra classes simply count as wrong answers.
    """
    out = model(input_ids)
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model returned {type(out).__name__}; expected logits of shape (B, L, V)")


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class EvalTally:
    """Running counts of an evaluation: ``add`` each batch, ``result`` the metrics."""

    def __init__(self) -> None:
        self.correct = self.scored = self.seq_correct = self.seqs = 0
        self.loss_sum = 0.0

    def add(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
        """logits (B, L, V'), targets (B, L), mask (B, L) bool. Unscored positions count as
        right for the sequence accuracy."""
        logits = logits.float()
        pred = logits.argmax(dim=-1)  # (B, L)
        hit = (pred == targets) | ~mask
        self.seq_correct += int(hit.all(dim=1).sum())
        self.seqs += targets.shape[0]
        self.correct += int(((pred == targets) & mask).sum())
        self.scored += int(mask.sum())
        self.loss_sum += float(F.cross_entropy(logits[mask], targets[mask], reduction="sum"))

    def result(self) -> dict[str, float]:
        return {
            "token_acc": self.correct / max(self.scored, 1),
            "seq_acc": self.seq_correct / max(self.seqs, 1),
            "loss": self.loss_sum / max(self.scored, 1),
        }


def eval_batches(task: Task, num_batches: int, batch_size: int, seed: int):
    """The held-out batches of an evaluation: batch i from ``("eval", seed, i)``."""
    int_arg("evaluate", "num_batches", num_batches, minimum=1)
    int_arg("evaluate", "batch_size", batch_size, minimum=1)
    int_arg("evaluate", "seed", seed)  # any int; a str or float would silently seed another stream
    for i in range(num_batches):
        yield task.batch(batch_size, make_generator(EVAL_STREAM, seed, i))


def check_eval_args(model, task, device, autocast_dtype) -> None:
    """What ``evaluate`` is given, beyond the batch numbers: a module whose vocabulary
    holds the task's tokens, a task, a device name and a floating autocast dtype."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"evaluate: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(task, Task):
        raise TypeError(f"evaluate: task must be a Task (mimetic.tasks.make_task), got {type(task).__name__}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and vocab < task.vocab_size:
        raise ValueError(f"evaluate: the model's vocab_size={vocab} is smaller than the {task.name} task's "
                         f"vocab_size={task.vocab_size}")
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"evaluate: device={device!r} is not a device name (e.g. 'cpu', 'cuda')") from None
    if autocast_dtype is not None and autocast_dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"evaluate: autocast_dtype={autocast_dtype!r} must be torch.bfloat16, torch.float16, "
                         "torch.float32 or None")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    task: Task,
    num_batches: int = 8,
    batch_size: int = 64,
    seed: int = 0,
    *,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    at_scored: bool = False,
) -> dict[str, float]:
    """Evaluate ``model`` on ``num_batches`` fresh batches of ``task``.

    Batch i is drawn from a generator seeded with ``("eval", seed, i)`` (held out from the
    training stream, which is tagged "train"), so equal arguments give the same data.

    Args:
        model: maps input_ids (B, L) long to logits (B, L, V') with V' >= task.vocab_size.
        device: where to run; defaults to the device of the model's first parameter.
        autocast_dtype: e.g. ``torch.bfloat16`` to evaluate under autocast (CUDA); None = off.
        at_scored: the model takes ``positions`` (B, P) long (``MambaLM``) and computes its
            logits only there: the task's scored positions (:func:`scored_slots`), the same
            metrics without the (B, L, V) logits (MQAR scores 4 of 64 positions, at V 8192).

    Returns:
        ``{"token_acc", "seq_acc", "loss"}``: the fraction of scored tokens whose argmax is the
        target; the fraction of sequences with every scored token right; the mean cross-entropy
        (nats) over scored tokens. The model's train/eval mode is restored afterwards.
    """
    check_eval_args(model, task, device, autocast_dtype)
    batches = eval_batches(task, num_batches, batch_size, seed)
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    tally = EvalTally()
    try:
        for input_ids, targets, mask in batches:
            input_ids, targets, mask = input_ids.to(device), targets.to(device), mask.to(device)
            ctx = (
                torch.autocast(device.type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            if at_scored:
                positions, targets, mask = scored_slots(targets, mask, task.max_scored, task.name)
            with ctx:
                logits = model(input_ids, positions=positions) if at_scored else model_logits(model, input_ids)
            tally.add(logits, targets, mask)
    finally:
        model.train(was_training)
    return tally.result()


def copy_accuracy_by_length(
    model: torch.nn.Module,
    task: Task,
    lengths,
    num_batches: int = 8,
    batch_size: int = 64,
    seed: int = 0,
    *,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[int, tuple[float, float]]:
    """Jelassi et al.'s copy evaluation of a trained ``model``: per string length n,
    ``(exact, char_acc)``.

    For each n in ``lengths`` the model reads ``num_batches`` batches of
    ``task.length_eval_task(n)`` (copy_jelassi: one string of exactly n letters per context,
    ``$ s | s .`` then pad; copy: ``copy_len = n``) and is scored teacher-forced: at each
    position of the copy the argmax given the true prefix. ``exact`` is the fraction of strings
    whose n copied letters are all right (teacher-forced, which is what greedy decoding of the
    string gives when every step is right), ``char_acc`` the fraction of copied letters that are
    right. Both use ``evaluate`` on that task, whose sequences each hold one string with
    exactly its n letters scored, so they are its ``seq_acc`` and ``token_acc``.

    Args:
        task: a ``copy_jelassi`` or ``copy`` task (what the model was trained on; its string
            lengths are replaced by each n, its alphabet and context are kept).
        lengths: string lengths to test, e.g. ``range(5, 101)`` to test past a training range
            of [5, 50].
        num_batches, batch_size, seed, device, autocast_dtype: as for ``evaluate`` (the same
            held-out "eval" stream).

    Returns:
        ``{n: (exact, char_acc)}`` in the order of ``lengths``.
    """
    if not isinstance(task, (CopyTask, JelassiCopyTask)):
        raise ValueError(f"copy_accuracy_by_length needs a copy or copy_jelassi task, got {task.name!r}")
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__iter__"):
        raise ValueError(f"copy_accuracy_by_length: lengths={lengths!r} must be a list or range of string lengths")
    # int(2.5) or int(True) would test another length than asked; numpy ints are fine
    lengths = [n.__index__() if hasattr(type(n), "__index__") and not isinstance(n, bool) else n for n in lengths]
    for n in lengths:
        int_arg("copy_accuracy_by_length", "length", n, minimum=1)
    out: dict[int, tuple[float, float]] = {}
    for n in lengths:
        m = evaluate(model, task.length_eval_task(int(n)), num_batches=num_batches, batch_size=batch_size,
                     seed=seed, device=device, autocast_dtype=autocast_dtype)
        out[int(n)] = (m["seq_acc"], m["token_acc"])
    return out
