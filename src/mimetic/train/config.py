"""Training configuration."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from .._validate import bool_arg, device_problem, int_arg, real_arg


@dataclass
class TrainConfig:
    """Everything ``train()`` needs besides the model and the task.

    Optimisation: AdamW (``lr``, ``betas``, ``eps``, ``weight_decay``; no decay on biases,
    norms, ``A_log``, ``D``, ``dt_bias`` and 1-D params), ``warmup_steps`` of linear warmup from
    0, then cosine decay to ``lr * min_lr_ratio`` at ``steps``; gradients clipped to global
    norm ``grad_clip`` (None = off).

    Data: the batch of step s is drawn from a generator seeded with ``("train", seed, s)``, so
    the data stream is a function of (seed, step) and a resumed run sees the same batches.
    ``seed`` also seeds torch's global RNG at the start (dropout etc.).

    Evaluation: every ``eval_every`` steps and at the end, on ``eval_batches`` batches of
    ``eval_batch_size`` (default ``batch_size``) from the held-out "eval" seed stream with
    ``eval_seed``. Early stop (``early_stop``) when eval token accuracy >= ``target_acc``.

    Output (only if ``out_dir``): ``metrics.jsonl`` (one line per eval), checkpoints
    (``checkpoints/step_XXXXXXX/``) every ``checkpoint_every`` steps (default: every eval) and
    at the end, keeping the ``keep_checkpoints`` newest; ``result.json`` once finished; a
    TensorBoard log if ``tensorboard`` and TensorBoard is installed. ``resume`` continues from
    the newest checkpoint in ``out_dir`` (or starts fresh if none).

    ``device``: None = "cuda" if available else "cpu". ``amp``: None = bf16 autocast on CUDA,
    fp32 on CPU; True/False forces it. ``cuda_graph``: None = on CUDA, a ``MambaLM`` that
    ``mimetic.ensemble.EnsembleLM`` can hold trains through ``train_ensemble`` as a one-member
    ensemble (batches drawn a chunk ahead, each step one CUDA graph replay, losses read back
    at eval/checkpoint steps: same numbers, no host work a step); False = the eager loop
    below; True = require the graph path. ``interrupt_after``: stop after this step as if
    preempted (checkpoint saved, no ``result.json``), used by tests and for time-sliced jobs.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    seed: int = 0

    eval_every: int = 100
    eval_batches: int = 4
    eval_batch_size: int | None = None
    eval_seed: int = 0
    target_acc: float | None = None
    early_stop: bool = True

    out_dir: str | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    resume: bool = False
    tensorboard: bool = False
    progress: bool = True

    device: str | None = None
    amp: bool | None = None
    cuda_graph: bool | None = None
    interrupt_after: int | None = None
    #: Under torchrun with several processes: "ddp" (DistributedDataParallel, a replica per
    #: rank) or "fsdp" (FSDP2, parameters and optimizer state sharded); see ``train.distributed``.
    parallel: str = "ddp"

    #: Resume only: settings that may differ from the checkpoint's (True = any). By default a
    #: resumed run refuses a changed setting, naming it (see ``mimetic.train.resume``).
    allow_changed: bool | tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.betas, (list, tuple)):
            self.betas = tuple(self.betas)  # type: ignore[assignment]  # TOML/JSON give lists
        if isinstance(self.allow_changed, (list, tuple)):
            self.allow_changed = tuple(self.allow_changed)
        problems = config_problems(self)
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict (e.g. a TOML table); unknown keys -> ValueError naming them."""
        if not isinstance(d, dict):
            raise ValueError(f"TrainConfig.from_dict takes a dict of fields, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s): {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


_POSITIVE_INTS = ("steps", "batch_size", "eval_every", "eval_batches", "keep_checkpoints")
_OPTIONAL_POSITIVE_INTS = ("eval_batch_size", "checkpoint_every", "interrupt_after")
_BOOLS = ("early_stop", "resume", "tensorboard", "progress")
_OPTIONAL_BOOLS = ("amp", "cuda_graph")


def _problem(check, *args, **kw) -> str | None:
    """The message of ``check(*args, **kw)``'s ValueError without its prefix, or None."""
    try:
        check("TrainConfig", *args, **kw)
    except ValueError as e:
        return str(e).split(": ", 1)[1]
    return None


def config_problems(c: TrainConfig) -> list[str]:
    """Every invalid field of ``c`` as "name=value must be ...": types (no bools for numbers,
    no floats for step counts: ``steps=6.5`` would train 7 steps and report 6), ranges
    (``grad_clip`` > 0: a negative one ascends the gradient, 0 freezes training;
    ``weight_decay`` >= 0) and consistency (``resume`` needs ``out_dir``)."""
    found = [_problem(int_arg, n, getattr(c, n), minimum=1) for n in _POSITIVE_INTS]
    found += [_problem(int_arg, n, getattr(c, n), minimum=1, optional=True) for n in _OPTIONAL_POSITIVE_INTS]
    found += [_problem(int_arg, "warmup_steps", c.warmup_steps, minimum=0),
              _problem(int_arg, "seed", c.seed), _problem(int_arg, "eval_seed", c.eval_seed),
              _problem(real_arg, "lr", c.lr, low=0, low_open=True),
              _problem(real_arg, "min_lr_ratio", c.min_lr_ratio, low=0, high=1),
              _problem(real_arg, "weight_decay", c.weight_decay, low=0),
              _problem(real_arg, "eps", c.eps, low=0, low_open=True),
              _problem(real_arg, "grad_clip", c.grad_clip, low=0, low_open=True, optional=True),
              _problem(real_arg, "target_acc", c.target_acc, low=0, high=1, low_open=True, optional=True)]
    found += [_problem(bool_arg, n, getattr(c, n)) for n in _BOOLS]
    found += [_problem(bool_arg, n, getattr(c, n), optional=True) for n in _OPTIONAL_BOOLS]
    if c.parallel not in ("ddp", "fsdp"):
        found.append(f"parallel={c.parallel!r} must be 'ddp' or 'fsdp'")
    if not (isinstance(c.betas, tuple) and len(c.betas) == 2
            and all(_problem(real_arg, "b", b, low=0, high=1, high_open=True) is None for b in c.betas)):
        found.append(f"betas={c.betas!r} must be two numbers in [0, 1)")
    if c.out_dir is not None and not isinstance(c.out_dir, (str, os.PathLike)):
        found.append(f"out_dir={c.out_dir!r} must be a path (str) or None")
    elif c.out_dir is not None and not os.fspath(c.out_dir):
        found.append("out_dir='' is no folder (it would write into the current one); give a path or None")
    if c.device is not None:
        found.append(device_problem(c.device))
    if not (isinstance(c.allow_changed, bool)
            or (isinstance(c.allow_changed, tuple) and all(isinstance(n, str) for n in c.allow_changed))):
        found.append(f"allow_changed={c.allow_changed!r} must be true/false or a list of setting names")
    elif isinstance(c.allow_changed, tuple):
        fields = {f.name for f in dataclasses.fields(c)}
        unknown = [n for n in c.allow_changed
                   if not (n in fields or n in ("task", "model")
                           or (n.startswith(("task.", "model.")) and len(n.split(".", 1)[1]) > 0))]
        if unknown:
            found.append(f"allow_changed names {unknown}, which are no settings (TrainConfig fields, "
                         "task[.<knob>] or model[.<field>])")
    if c.resume and c.out_dir is None:
        found.append("resume=True needs out_dir")
    return [p for p in found if p is not None]
