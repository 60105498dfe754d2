"""Input validation shared by the ops: clear errors instead of silent wrong answers."""
from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_shape(name: str, t: torch.Tensor | None, shape: Sequence[int | None]) -> None:
    """Raise ``ValueError`` unless ``t`` has ``shape`` (``None`` entries match any size)."""
    if t is None:
        return
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")


def check_float(name: str, t: torch.Tensor | None) -> None:
    if t is not None and not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor (or None), got {type(t).__name__}")
    if t is not None and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")


def check_same_device(**tensors: torch.Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device: {listing}")


def check_tensors(**tensors: torch.Tensor | None) -> None:
    """The checks every op starts with: each given tensor floating, all on one device."""
    for name, t in tensors.items():
        check_float(name, t)
    check_same_device(**tensors)
