"""The common interface of the synthetic recall tasks, the registry, and seed derivation.

Every task is a frozen dataclass whose fields are its knobs. It produces batches on the fly
from a ``torch.Generator`` (no files), so a batch is a pure function of the generator's seed:

    input_ids, targets, loss_mask = task.batch(batch_size, generator)

* ``input_ids``: LongTensor (B, L), tokens in ``[0, task.vocab_size)``, L = ``task.seq_len``.
* ``targets``:   LongTensor (B, L). Next-token convention: ``targets[:, t]`` is what the model
  should output at position t (having read ``input_ids[:, :t+1]``). Unscored positions hold a
  valid token id too (not -100), so ``targets`` can always be indexed/embedded; only the mask
  says what counts.
* ``loss_mask``: BoolTensor (B, L), True where the position is scored (loss and accuracy).

Tensors are created on the CPU (the generator's device); the trainer moves them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, ClassVar

import torch

from .._validate import numpy_note

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that is a deterministic function of ``parts`` (e.g. ``("train", seed, step)``).

    Why a hash and not ``seed + step``: streams tagged differently ("train", "eval") and runs
    with nearby seeds never share a batch by construction of overlapping ranges; equal parts
    always give the same seed, across processes and Python versions (no ``hash()`` salt).
    """
    text = "\x1f".join(repr(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & (2**63 - 1)


def make_generator(*parts: Any) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


class Task:
    """Base class of the tasks. Subclasses are ``@dataclass(frozen=True)`` with knob fields.

    Subclasses provide ``name`` (class attribute), ``vocab_size`` and ``seq_len`` (a field or a
    derived property), ``length_knob`` (the field that sets the length in sweeps, e.g.
    ``"copy_len"`` for copy, ``"seq_len"`` for the others), ``_validate()`` and ``batch()``.
    """

    name: ClassVar[str] = "task"
    length_knob: ClassVar[str] = "seq_len"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            if kind.endswith(" | None"):  # an optional knob: None means its derived default
                if value is None:
                    continue
                kind = kind[: -len(" | None")]
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{self.name}: {f.name} must be an int, got {value!r}{numpy_note(value)}")
            if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                    or not math.isfinite(value)):
                raise ValueError(f"{self.name}: {f.name} must be a finite number, got {value!r}{numpy_note(value)}")
            if kind == "bool" and not isinstance(value, bool):  # "no" would be taken as true
                raise ValueError(f"{self.name}: {f.name} must be true or false, got {value!r}")
        self._validate()

    def _validate(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Sample a batch: (input_ids (B, L) long, targets (B, L) long, loss_mask (B, L) bool)."""
        raise NotImplementedError

    def with_length(self, length: int) -> Task:
        """A copy with the length knob (``self.length_knob``) set to ``length``."""
        return dataclasses.replace(self, **{self.length_knob: length})  # type: ignore[type-var]

    def with_seq_len(self, seq_len: int) -> Task:
        """A copy of the task whose ``input_ids`` have length ``seq_len``, same token format.

        Used for length-generalization evaluation (train short, test long). Tasks whose length
        is derived from another knob override this (copy: ``seq_len = 2 * copy_len + 1``).
        """
        return dataclasses.replace(self, seq_len=seq_len)  # type: ignore[type-var]

    def length_eval_task(self, length: int) -> Task:
        """The task a model trained on ``self`` is evaluated on at ``length`` (a value of the
        length knob), for length generalization (sweeps' ``[eval] lengths``).

        Default: ``with_length(length)``, the same format at another length. Tasks whose
        training format mixes lengths override it to test one length exactly (copy_jelassi:
        strings of exactly ``length`` characters, one per context, as in Jelassi et al.).
        """
        return self.with_length(length)

    @property
    def max_scored(self) -> int:
        """The most positions of one sequence that ``loss_mask`` can score: a static bound that
        lets a trainer compute the LM head only at scored positions, in fixed shapes (CUDA
        graphs). Default ``seq_len`` (no bound known); tasks that score few positions say so."""
        return int(self.seq_len)  # type: ignore[attr-defined]

    @property
    def length(self) -> int:
        """The value of the length knob (what sweeps and plots call the task's length)."""
        return int(getattr(self, self.length_knob))

    def to_dict(self) -> dict[str, Any]:
        """The name and knobs, plus derived vocab_size/seq_len (for logs and result files)."""
        d: dict[str, Any] = {"name": self.name}
        d.update(dataclasses.asdict(self))  # type: ignore[call-overload]
        d["vocab_size"] = self.vocab_size  # type: ignore[attr-defined]
        d["seq_len"] = self.seq_len  # type: ignore[attr-defined]
        return d


def scored_slots(targets: torch.Tensor, mask: torch.Tensor, slots: int,
                 task_name: str = "task") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scored positions of each sequence, in order, in ``slots`` fixed slots, so that the
    LM head runs at scored positions only and in static shapes (a CUDA graph):
    targets, mask (B, L) -> positions (B, slots) long, their targets (B, slots) and a mask
    (B, slots) bool that is False on the slots left over (which point at unscored positions).

    Raises ValueError when a sequence scores more than ``slots`` positions (a task whose
    ``max_scored`` is wrong): those positions would silently leave the loss."""
    most = int(mask.sum(dim=1).max()) if mask.numel() else 0
    if most > slots:
        raise ValueError(f"{task_name}: a sequence scores {most} positions, more than its "
                         f"max_scored={slots}")
    # A stable sort of "unscored" puts the scored positions first, in their order.
    positions = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :slots]
    return positions, targets.gather(1, positions), mask.gather(1, positions)


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator adding a task to the registry under ``cls.name``."""
    TASKS[cls.name] = cls
    return cls


def make_task(name: str, **knobs: Any) -> Task:
    """Build a task by registry name with its knobs, e.g. ``make_task("mqar", num_kv_pairs=8)``.

    Raises ValueError for an unknown name (listing the valid ones) or an unknown knob (listing
    the task's knobs); the task itself validates knob values.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    valid = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(knobs) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown knob(s) {', '.join(unknown)} for task {name!r}; valid knobs: {', '.join(valid)}"
        )
    return cls(**knobs)


def _check_batch_args(batch_size: int, generator: torch.Generator) -> None:
    """``Task.batch``'s arguments: a positive int and a ``torch.Generator`` (the batch is a
    function of its seed; None would draw from the global RNG, unreproducibly)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}{numpy_note(batch_size)}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator (e.g. mimetic.tasks.make_generator(seed)), "
                         f"got {type(generator).__name__}")


def random_subset_rows(
    batch_size: int, population: int, k: int, generator: torch.Generator
) -> torch.Tensor:
    """(batch_size, k) long: per row, k distinct values of ``range(population)`` in random order.

    Uses argsort of uniform noise (a uniformly random permutation per row) and keeps the first k.
    ``selective_copy`` draws with it, and keeps it for its stream of batches (committed
    results resume on it); new draws take :func:`random_subset_rows_topk`.
    """
    noise = torch.rand(batch_size, population, generator=generator)
    return noise.argsort(dim=1)[:, :k]


def random_subset_rows_topk(
    batch_size: int, population: int, k: int, generator: torch.Generator
) -> torch.Tensor:
    """:func:`random_subset_rows` in distribution, from the k smallest of the same uniform noise
    (``topk``, linear in ``population``, not a full sort: ~6x faster at population 4096, where
    MQAR's batches at vocab 8192 spent most of their time). Where the noise ties, argsort
    and topk may order the tied values differently, so the two streams differ, not the law."""
    noise = torch.rand(batch_size, population, generator=generator)
    return noise.topk(k, dim=1, largest=False).indices
