"""Normalization layers as thin modules over the ``rms_norm`` op."""
from __future__ import annotations

import torch
from torch import nn

from .._validate import bool_arg, int_arg, real_arg
from ..ops import rms_norm


def _check_norm_args(where: str, dim, eps, group_size=None) -> None:
    int_arg(where, "dim", dim, minimum=1)
    real_arg(where, "eps", eps, low=0)  # eps < 0 takes the root of a negative mean for small rows
    int_arg(where, "group_size", group_size, minimum=1, optional=True)
    if group_size is not None and dim % group_size:
        raise ValueError(f"{where}: group_size={group_size} must divide dim={dim}")


class RMSNorm(nn.Module):
    """RMSNorm over the last dim; ``forward(x, residual=None, prenorm=False)`` can fuse the
    residual add that precedes it in a pre-norm block. Parameter: ``weight`` (dim,)."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        _check_norm_args("RMSNorm", dim, eps)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        return rms_norm(x, self.weight, eps=self.eps, residual=residual, prenorm=prenorm,
                        residual_in_fp32=residual_in_fp32)


class RMSNormGated(nn.Module):
    """Mamba-2's gated RMSNorm: ``norm(x * silu(z)) * weight`` per group of ``group_size``
    features (or gate after the norm with ``norm_before_gate``). x, z: (..., dim)."""

    def __init__(self, dim: int, eps: float = 1e-5, norm_before_gate: bool = False,
                 group_size: int | None = None, device=None, dtype=None):
        super().__init__()
        _check_norm_args("RMSNormGated", dim, eps, group_size)
        bool_arg("RMSNormGated", "norm_before_gate", norm_before_gate)
        self.eps, self.norm_before_gate, self.group_size = eps, norm_before_gate, group_size
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x, z=None):
        return rms_norm(x, self.weight, z=z, eps=self.eps, group_size=self.group_size,
                        norm_before_gate=self.norm_before_gate)
