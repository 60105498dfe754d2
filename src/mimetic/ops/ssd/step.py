"""One decoding step of the Mamba-2 recurrence in PyTorch, updating the state in place.

The public op, its checks and its backend table are in ``__init__.py``
(:func:`mimetic.ops.ssd_state_update`); the fused kernel is ``step_triton.py``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._time_step import process_dt


def ssd_state_update_torch(
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
    dt_limit: tuple[float, float] = (0.0, math.inf),
    A_is_log: bool = False,
) -> torch.Tensor:
    """Same contract as :func:`mimetic.ops.ssd_state_update` (without ``backend``):
    state (b, h, p, n) updated in place, returns y (b, h, p) in x's dtype."""
    H, G = x.shape[1], B.shape[1]
    if A_is_log:
        A = -torch.exp(A.float())
    dt = process_dt(dt, dt_bias, dt_softplus, dt_limit)
    Bh = B.float().repeat_interleave(H // G, dim=1)  # (batch, H, N)
    Ch = C.float().repeat_interleave(H // G, dim=1)
    dA = torch.exp(dt * A.float())  # (batch, H)
    new_state = state.float() * dA[:, :, None, None] + (dt[:, :, None] * x.float())[..., None] * Bh[:, :, None, :]
    state.copy_(new_state)
    y = torch.einsum("bhpn,bhn->bhp", new_state, Ch)
    if D is not None:
        Df = D.float()
        y = y + x.float() * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)
