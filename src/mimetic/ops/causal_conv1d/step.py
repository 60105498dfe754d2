"""One decoding step of the causal depthwise conv in PyTorch, updating its state in place.

The public op, its checks and its backend table are in ``__init__.py``
(:func:`mimetic.ops.causal_conv1d_update`); the fused kernel is ``step_triton.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_update_torch(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Same contract as :func:`mimetic.ops.causal_conv1d_update` (without ``backend``):
    conv_state updated in place, returns out (b, d) in x's dtype."""
    window = torch.cat([conv_state, x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)  # (b, d, W)
    out = (window.float() * weight.float()).sum(-1)
    if bias is not None:
        out = out + bias.float()
    conv_state.copy_(window[:, :, 1:])
    if activation in ("silu", "swish"):
        out = F.silu(out)
    return out.to(x.dtype)
