"""``gemv``: the projections of a decoding step, y = x W^T + b for a few rows of x.

The public function takes ``nn.Linear``'s arguments and returns what ``F.linear``
returns; on CUDA, for a handful of rows and no gradient, it runs the Triton kernel of
``triton.py`` (faster than cuBLAS at these shapes: see there), else ``F.linear``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_float, check_same_device, check_shape
from .._dispatch import has_kernel, resolve_backend

__all__ = ["gemv"]


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         backend: str = "auto") -> torch.Tensor:
    """x (..., K) @ weight (N, K)^T + bias (N,) -> (..., N), as ``F.linear``.

    backend: "auto" (the Triton kernel for CUDA tensors with at most ``MAX_ROWS`` rows,
    no gradient wanted and a half/float32 dtype; else ``F.linear``), "torch" /
    "reference" (``F.linear``) or "triton" (an error where it cannot run, e.g. when a
    gradient is wanted: the kernel has no backward).
    """
    for name, t in dict(x=x, weight=weight, bias=bias).items():
        check_float(name, t)
    check_same_device(x=x, weight=weight, bias=bias)
    if x.dim() == 0 or x.shape[-1] != weight.shape[-1] or weight.dim() != 2:
        raise ValueError(f"x (..., K) and weight (N, K) must share K; got {tuple(x.shape)} "
                         f"and {tuple(weight.shape)}")
    check_shape("bias", bias, (weight.shape[0],))
    choice = resolve_backend(backend, x, has_triton_kernel=has_kernel(__name__))
    if choice == "triton":
        from .triton import MAX_ROWS, gemv_triton

        rows = x.numel() // x.shape[-1]
        wants_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, weight, bias))
        fits = (rows <= MAX_ROWS and not wants_grad and x.dtype != torch.float64
                and x.dtype == weight.dtype)
        if fits:
            x2 = x.reshape(rows, x.shape[-1])
            if x2.stride(-1) != 1:
                x2 = x2.contiguous()
            return gemv_triton(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])
        if backend == "triton":
            raise RuntimeError(f"the Triton gemv takes at most {MAX_ROWS} rows, matching "
                               "float dtypes and no gradient; use backend='torch'")
    return F.linear(x, weight, bias)
