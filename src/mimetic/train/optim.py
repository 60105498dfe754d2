"""AdamW with decay/no-decay parameter groups and the warmup + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch

from .config import TrainConfig

#: Parameter-name endings (last dotted component) excluded from weight decay. Decaying A_log
#: would pull the state decay towards exp(-exp(0)) and D / dt biases towards 0: these are
#: structural parameters, not weights, and mamba_ssm excludes them too.
NO_DECAY_SUFFIXES = ("bias", "A_log", "D", "dt_bias")


def wants_decay(name: str, param: torch.Tensor) -> bool:
    """True if ``param`` (named ``name`` in ``model.named_parameters()``) gets weight decay.

    No decay for: 1-D (or 0-D) params (biases, norm scales, per-head A/D/dt_bias), names whose
    last component is one of ``NO_DECAY_SUFFIXES`` or contains "norm", and params marked
    ``_no_weight_decay = True`` (mamba_ssm's convention).
    """
    last = name.rsplit(".", 1)[-1]
    if param.ndim < 2 or getattr(param, "_no_weight_decay", False):
        return False
    if last in NO_DECAY_SUFFIXES or "norm" in name.lower():
        return False
    return True


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: ``[{"params": decayed, "weight_decay": wd}, {"params": rest, 0.0}]``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if wants_decay(name, p) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups(model, config.weight_decay)`` with the config's lr/betas/eps."""
    return torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas, eps=config.eps
    )


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup over
    ``warmup_steps`` (from lr/warmup_steps up to lr), then cosine from lr to
    ``lr * min_lr_ratio`` at the last step. A pure function of the step, so the schedule needs
    no state of its own to resume."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"lr_at: step={step!r} must be an int >= 0")
    lr, warm, total = config.lr, config.warmup_steps, config.steps
    if warm > 0 and step < warm:
        return lr * (step + 1) / warm
    span = max(total - warm, 1)
    progress = min(max(step - warm, 0) / span, 1.0)
    floor = lr * config.min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
