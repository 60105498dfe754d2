"""Mamba-2 state space dual (SSD) scan, plain and sequential: the oracle.

Per batch b, head h (headdim P), state n, with group g = h // (H / G):

    dt'_t = clamp(softplus(dt_t + dt_bias[h]), *dt_limit)     (softplus optional)
    S_t   = exp(dt'_t * A[h]) * S_{t-1} + dt'_t * x_t[:, None] * B_t[g][None, :]   (P, N)
    y_t   = S_t @ C_t[g] + D[h] * x_t
    out   = y * silu(z)                                        (when z is given)

Computed in float32 (float64 for float64 inputs); the output has x's dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._time_step import process_dt


def ssd_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """The contract of every SSD backend. Shapes: x, z (b, L, h, p); dt (b, L, h); A (h,);
    B, C (b, L, g, n); D (h,) or (h, p); dt_bias (h,); initial_states (b, h, p, n).

    ``chunk_size`` is accepted for signature parity with the chunked paths and unused.
    Returns y (b, L, h, p) in x's dtype and, if asked, the final states (b, h, p, n) in
    float32 (float64 for float64 inputs).
    """
    del chunk_size
    dtype_in = x.dtype
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, A = x.to(compute), A.to(compute)
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    dt = process_dt(dt, dt_bias, dt_softplus, dt_limit, compute)
    Bh = B.to(compute).repeat_interleave(H // G, dim=2)  # (batch, L, H, N)
    Ch = C.to(compute).repeat_interleave(H // G, dim=2)
    S = x.new_zeros(batch, H, P, N)
    if initial_states is not None:
        S = S + initial_states.to(compute)
    ys = []
    for t in range(L):
        dA = torch.exp(dt[:, t] * A)  # (batch, H)
        S = dA[:, :, None, None] * S + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Ch[:, t]))
    y = torch.stack(ys, dim=1) if L > 0 else x.new_zeros(x.shape)
    if D is not None:
        Dc = D.to(compute)
        y = y + x * (Dc[:, None] if Dc.dim() == 1 else Dc)
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(dtype_in)
    return (out, S) if return_final_states else out
