"""RMSNorm (optionally gated, grouped, fused with the residual add): the public op and
its backend table.

Backends (``BACKENDS``): ``reference.py`` (vectorized PyTorch, both the oracle and the
``"torch"`` path) and ``triton.py`` (one fused kernel).
"""
from __future__ import annotations

import torch

from ..._validate import bool_arg, int_arg, real_arg
from .._checks import check_shape, check_tensors
from .._dispatch import lazy, resolve_backend
from .reference import rms_norm_ref

__all__ = ["rms_norm", "rms_norm_ref"]


BACKENDS = {
    "reference": rms_norm_ref,
    "torch": rms_norm_ref,
    "triton": lazy(f"{__name__}.triton", "rms_norm_triton"),
}


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    eps: float = 1e-5,
    group_size: int | None = None,
    norm_before_gate: bool = False,
    residual: torch.Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    backend: str = "auto",
):
    """RMSNorm over the last dim of x (..., dim) with weight (dim,); see
    :func:`rms_norm_ref` for the exact steps. ``z`` (..., dim) gates with SiLU (Mamba-2's
    gated norm); ``residual`` (..., dim) is added first and returned when ``prenorm``.
    """
    check_tensors(x=x, weight=weight, bias=bias, z=z, residual=residual)
    dim = x.shape[-1]
    check_shape("weight", weight, (dim,))
    check_shape("bias", bias, (dim,))
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    int_arg("rms_norm", "group_size", group_size, minimum=1, optional=True)
    for name, value in (("norm_before_gate", norm_before_gate), ("prenorm", prenorm),
                        ("residual_in_fp32", residual_in_fp32)):
        bool_arg("rms_norm", name, value)  # "no" would be taken as true
    if group_size is not None and dim % group_size != 0:
        raise ValueError(f"group_size={group_size} must divide dim={dim}")
    real_arg("rms_norm", "eps", eps, low=0)  # a negative eps takes the root of a negative mean
    return BACKENDS[resolve_backend(backend, x)](
        x, weight, bias=bias, z=z, eps=eps, group_size=group_size,
        norm_before_gate=norm_before_gate, residual=residual, prenorm=prenorm,
        residual_in_fp32=residual_in_fp32)
