"""RMSNorm with optional SiLU gate, groups and fused residual add, in plain PyTorch.

This path is already vectorized (no loop), so it serves as both oracle and CPU path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm_ref(
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
):
    """The contract of every RMSNorm backend. x, z, residual: (..., d); weight, bias: (d,).

    Steps: x = x + residual (the sum is the new residual); gate before the norm
    (``x * silu(z)``) unless ``norm_before_gate``; normalize each group of
    ``group_size`` features by its root mean square; scale (and shift); gate after the
    norm if ``norm_before_gate``. Returns out (x's dtype), and with ``prenorm`` also the
    new residual (float32 if ``residual_in_fp32`` else x's dtype).
    """
    dtype_in = x.dtype
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    h = x.to(compute)
    if residual is not None:
        h = h + residual.to(compute)
    residual_out = h.to(torch.float32 if residual_in_fp32 and compute != torch.float64 else dtype_in)
    if z is not None and not norm_before_gate:
        h = h * F.silu(z.to(compute))
    dim = h.shape[-1]
    gs = dim if group_size is None else group_size
    hg = h.reshape(*h.shape[:-1], dim // gs, gs)
    hg = hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + eps)
    out = hg.reshape(h.shape) * weight.to(compute)
    if bias is not None:
        out = out + bias.to(compute)
    if z is not None and norm_before_gate:
        out = out * F.silu(z.to(compute))
    out = out.to(dtype_in)
    return (out, residual_out) if prenorm else out
