"""One decoding step of the Mamba-1 recurrence in PyTorch, updating the state in place.

The public op, its checks and its backend table are in ``__init__.py``
(:func:`mimetic.ops.selective_state_update`); the fused kernel is ``step_triton.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._time_step import process_dt


def selective_state_update_torch(
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
    A_is_log: bool = False,
    dt_proj_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as :func:`mimetic.ops.selective_state_update` (without ``backend``):
    state (b, d, n) updated in place, returns y (b, d) in x's dtype."""
    if dt_proj_weight is not None:
        dt = dt.float() @ dt_proj_weight.float().t()
    if A_is_log:
        A = -torch.exp(A.float())
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
