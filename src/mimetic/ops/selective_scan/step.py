"""One decoding step of the Mamba-1 recurrence, updating the state in place."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._time_step import process_dt


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """state (batch, dim, n) updated in place; x, dt, z (batch, dim); A (dim, n);
    B, C (batch, n); D, dt_bias (dim,). Returns y (batch, dim) in x's dtype."""
    dt = process_dt(dt, dt_bias, dt_softplus)
    dA = torch.exp(dt.unsqueeze(-1) * A.float())  # (batch, dim, n)
    dBx = (dt * x.float()).unsqueeze(-1) * B.float().unsqueeze(1)
    new_state = state.float() * dA + dBx
    state.copy_(new_state)
    y = (new_state * C.float().unsqueeze(1)).sum(-1)
    if D is not None:
        y = y + x.float() * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)
