"""One decoding step of the causal depthwise conv, updating its state in place."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_shape


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """x: (batch, dim); conv_state: (batch, dim, width-1), the last width-1 inputs, shifted
    in place to include x; weight (dim, width); bias (dim,). Returns out (batch, dim)."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    batch, dim = x.shape
    check_shape("conv_state", conv_state, (batch, dim, weight.shape[1] - 1))
    window = torch.cat([conv_state, x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)  # (b, d, W)
    out = (window.float() * weight.float()).sum(-1)
    if bias is not None:
        out = out + bias.float()
    conv_state.copy_(window[:, :, 1:])
    if activation in ("silu", "swish"):
        out = F.silu(out)
    return out.to(x.dtype)
