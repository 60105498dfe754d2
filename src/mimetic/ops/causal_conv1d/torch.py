"""Causal depthwise conv1d through ``F.conv1d`` (one grouped convolution)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """Same contract as :func:`causal_conv1d_ref`."""
    dim, W = weight.shape
    if initial_states is None:
        padded = F.pad(x, (W - 1, 0))
    else:
        padded = torch.cat([initial_states.to(x.dtype), x], dim=-1)
    out = F.conv1d(padded, weight.unsqueeze(1).to(x.dtype),
                   None if bias is None else bias.to(x.dtype), groups=dim)
    if activation in ("silu", "swish"):
        out = F.silu(out)
    if return_final_states:
        return out, padded[:, :, padded.shape[-1] - (W - 1):]
    return out
