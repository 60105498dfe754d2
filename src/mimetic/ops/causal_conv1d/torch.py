"""Causal depthwise conv1d in pure PyTorch: W shifted multiply-adds, with its own backward.

The convolution is computed in the memory layout the input already has. Inside Mamba
and Mamba-2, ``x`` (batch, dim, L) is a transposed view of the in_proj output, i.e.
(batch, L, dim) memory: there one tap is ``out[:, t] += w[:, k] * x[:, t - s]``, a
contiguous row-wise multiply-add with the weights broadcast along the channels, and the
output comes back as the same kind of view (no transpose either way). A truly
(batch, dim, L)-contiguous ``x`` is transposed once into that layout (by the padding copy
that is made anyway).

Why not ``F.conv1d(groups=dim)``: on CPU its depthwise backward dominated the layer
(fwd+bwd of Mamba-2's conv, batch 16, L 256, dim 384: ~220 ms of a 1.3 s training
step under load), and it wants a (batch, dim, L)-contiguous input, so a (batch, L, dim)
view was copied in and the result copied back out. Here forward and backward are a few
passes over (batch, L, dim) each.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _silu_grad(g: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.silu_backward(g, pre)


class _CausalConv(torch.autograd.Function):
    """xp: (batch, W-1+L, dim) padded input in step-major layout (a view is fine); w (W, dim);
    bias (dim,) or None. Returns out (batch, L, dim)."""

    @staticmethod
    def forward(ctx, xp, w, bias, silu):
        W = w.shape[0]
        L = xp.shape[1] - (W - 1)
        pre = xp[:, W - 1:] * w[W - 1]
        if bias is not None:
            pre += bias
        for k in range(W - 1):
            pre.addcmul_(xp[:, k:k + L], w[k])
        ctx.silu, ctx.has_bias = silu, bias is not None
        ctx.save_for_backward(xp, w, pre if silu else None)
        return F.silu(pre) if silu else pre

    @staticmethod
    def backward(ctx, g):
        xp, w, pre = ctx.saved_tensors
        W = w.shape[0]
        L = xp.shape[1] - (W - 1)
        gpre = _silu_grad(g, pre) if ctx.silu else g
        gxp = gw = gbias = None
        if ctx.needs_input_grad[0]:
            gxp = xp.new_zeros(xp.shape)
            for k in range(W):
                gxp[:, k:k + L].addcmul_(gpre, w[k])
        if ctx.needs_input_grad[1]:
            gw = torch.stack([(gpre * xp[:, k:k + L]).sum((0, 1)) for k in range(W)])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gbias = gpre.sum((0, 1))
        return gxp, gw, gbias, None


def causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """Same contract as :func:`causal_conv1d_ref` (computed in float32 for half inputs,
    float64 for float64, like the reference)."""
    dim, W = weight.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.transpose(1, 2).to(compute)  # (batch, L, dim), a view for Mamba's inputs
    past = (initial_states.to(compute).transpose(1, 2) if initial_states is not None
            else xs.new_zeros(xs.shape[0], W - 1, dim))
    xp = torch.cat([past, xs], dim=1)  # (batch, W-1+L, dim), contiguous
    out = _CausalConv.apply(xp, weight.to(compute).t().contiguous(),
                            None if bias is None else bias.to(compute),
                            activation in ("silu", "swish"))
    out = out.to(x.dtype).transpose(1, 2)  # (batch, dim, L) view of (batch, L, dim)
    if return_final_states:
        past = (initial_states.to(x.dtype) if initial_states is not None
                else x.new_zeros(x.shape[0], dim, W - 1))
        final = torch.cat([past, x], dim=-1)
        return out, final[:, :, final.shape[-1] - (W - 1):]
    return out
