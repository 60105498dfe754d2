"""Training configuration."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


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

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # TOML/JSON give lists
        problems = []
        for name in ("steps", "batch_size", "eval_every", "eval_batches", "keep_checkpoints"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps={self.warmup_steps} must be >= 0")
        if self.lr <= 0:
            problems.append(f"lr={self.lr} must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.target_acc is not None and not 0 < self.target_acc <= 1:
            problems.append(f"target_acc={self.target_acc} must be in (0, 1]")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            problems.append(f"checkpoint_every={self.checkpoint_every} must be >= 1")
        if self.resume and self.out_dir is None:
            problems.append("resume=True needs out_dir")
        if problems:
            raise ValueError("TrainConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a plain dict (e.g. a TOML table); unknown keys -> ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s): {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d
