"""The time-step transform every scan and decoding step applies before discretizing."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NO_LIMIT = (0.0, math.inf)


def process_dt(dt: torch.Tensor, bias: torch.Tensor | None = None, softplus: bool = False,
               limit: tuple[float, float] = NO_LIMIT, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """dt' = clamp(softplus(dt + bias), *limit), each part optional, computed in ``dtype``.

    ``bias`` broadcasts against the trailing dims of dt: (h,) for Mamba-2's (..., h);
    Mamba-1 callers pass it shaped (d, 1) for (b, d, L) or (d,) for (b, d).
    """
    dt = dt.to(dtype)
    if bias is not None:
        dt = dt + bias.to(dtype)
    if softplus:
        dt = F.softplus(dt)
    if tuple(limit) != NO_LIMIT:
        dt = dt.clamp(min=limit[0], max=limit[1])
    return dt
