"""RMSNorm (optionally gated, grouped, fused with the residual add)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._checks import check_float, check_same_device, check_shape
from .._dispatch import has_kernel, resolve_backend
from .reference import rms_norm_ref

if TYPE_CHECKING:
    import torch

# Note: this package has a submodule named `torch` (the pure-PyTorch path); importing it
# rebinds the name `torch` in this namespace, so this file never uses the torch library
# at run time (annotations only).

__all__ = ["rms_norm", "rms_norm_ref"]


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
    for name, t in dict(x=x, weight=weight, bias=bias, z=z, residual=residual).items():
        check_float(name, t)
    check_same_device(x=x, weight=weight, bias=bias, z=z, residual=residual)
    dim = x.shape[-1]
    check_shape("weight", weight, (dim,))
    check_shape("bias", bias, (dim,))
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z must have x's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    if group_size is not None and (group_size <= 0 or dim % group_size != 0):
        raise ValueError(f"group_size={group_size} must divide dim={dim}")
    kwargs = dict(bias=bias, z=z, eps=eps, group_size=group_size,
                  norm_before_gate=norm_before_gate, residual=residual, prenorm=prenorm,
                  residual_in_fp32=residual_in_fp32)
    choice = resolve_backend(backend, x, has_triton_kernel=has_kernel(__name__))
    if choice == "triton":
        from .triton import rms_norm_triton

        return rms_norm_triton(x, weight, **kwargs)
    return rms_norm_ref(x, weight, **kwargs)
