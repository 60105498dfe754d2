"""Causal depthwise conv1d, plain: the oracle.

    out[b, d, t] = act(bias[d] + sum_k w[d, k] * x[b, d, t - (W-1) + k])

with x before step 0 taken from ``initial_states`` (zeros if absent) and act SiLU or none.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """The contract of every conv backend: x (b, d, L); weight (d, W); bias (d,);
    initial_states (b, d, W-1) holding the W-1 inputs before step 0. Computed in float32
    (float64 for float64 inputs). Returns out (b, d, L) in x's dtype and optionally the
    final states (b, d, W-1): the last W-1 inputs, for decoding."""
    batch, dim, L = x.shape
    W = weight.shape[1]
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute)
    past = (initial_states.to(compute) if initial_states is not None
            else xc.new_zeros(batch, dim, W - 1))
    padded = torch.cat([past, xc], dim=-1)  # (batch, dim, W-1+L)
    out = sum(weight[:, k, None].to(compute) * padded[:, :, k:k + L] for k in range(W))
    if bias is not None:
        out = out + bias.to(compute)[:, None]
    if activation in ("silu", "swish"):
        out = F.silu(out)
    out = out.to(x.dtype)
    if return_final_states:
        return out, padded[:, :, padded.shape[-1] - (W - 1):].to(x.dtype)
    return out
