"""Mamba-1 selective scan, plain and sequential: the oracle for every fast path.

Per batch b, channel d and state n, with delta' = softplus(delta + delta_bias) (optional):

    h_t = exp(delta'_t * A[d, n]) * h_{t-1} + delta'_t * B_t[n] * u_t
    y_t = sum_n C_t[n] * h_t[n] + D[d] * u_t
    out = y * silu(z)                      (when z is given)

Computed in float32 (float64 if the inputs are float64); the output has u's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._time_step import process_dt


def expand_groups(M: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, n, L) or (batch, groups, n, L) -> (batch, dim, n, L), channels split evenly
    across groups (group g serves channels g*dim/groups .. (g+1)*dim/groups - 1)."""
    if M.dim() == 3:
        return M.unsqueeze(1).expand(-1, dim, -1, -1)
    return M.repeat_interleave(dim // M.shape[1], dim=1)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
):
    """Shapes: u, delta, z (batch, dim, L); A (dim, n); B, C (batch, n, L) or
    (batch, groups, n, L); D, delta_bias (dim,); initial_state (batch, dim, n).

    Returns out (batch, dim, L) and, if asked, the last state (batch, dim, n) in float32.
    """
    dtype_in = u.dtype
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, A = u.to(compute), A.to(compute)
    dim, L = u.shape[1], u.shape[2]
    delta = process_dt(delta, None if delta_bias is None else delta_bias[:, None],
                       delta_softplus, dtype=compute)
    Bx = expand_groups(B.to(compute), dim)
    Cx = expand_groups(C.to(compute), dim)
    h = u.new_zeros(u.shape[0], dim, A.shape[1])
    if initial_state is not None:
        h = h + initial_state.to(compute)
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, :, t, None] * A)
        h = dA * h + (delta[:, :, t] * u[:, :, t])[:, :, None] * Bx[:, :, :, t]
        ys.append((h * Cx[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if L > 0 else u.new_zeros(u.shape)
    if D is not None:
        y = y + u * D.to(compute)[:, None]
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(dtype_in)
    return (out, h) if return_last_state else out
