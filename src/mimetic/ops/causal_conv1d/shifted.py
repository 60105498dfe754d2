"""Causal depthwise conv1d in pure PyTorch: W shifted multiply-adds, with its own backward.

The convolution is computed in the memory layout the input already has. Inside Mamba
and Mamba-2, ``x`` (batch, dim, L) is a transposed view of the in_proj output, i.e.
(batch, L, dim) memory: there one tap is ``out[:, t] += w[:, k] * x[:, t - s]``, a
contiguous row-wise multiply-add with the weights broadcast along the channels, and the
output comes back as the same kind of view (no transpose either way). A truly
(batch, dim, L)-contiguous ``x`` is transposed once into that layout first.

Why not ``F.conv1d(groups=dim)``: on CPU its depthwise backward dominated the layer
(benchmarks/RESULTS.md, CPU), and it wants a (batch, dim, L)-contiguous input, so a
(batch, L, dim) view was copied in and the result copied back out. Here forward and
backward are a few passes over (batch, L, dim) each.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _silu_grad(g: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """g * silu'(pre), with silu'(x) = s (1 + x (1 - s)) and s = sigmoid(x)."""
    s = torch.sigmoid(pre)
    return torch.rsub(s, 1).mul_(pre).add_(1).mul_(s).mul_(g)


class _CausalConv(torch.autograd.Function):
    """src: (b, p+L, d) in step-major layout (a strided view is fine), the input after
    ``p`` steps of past (p = 0: zeros before step 0, p = W-1: initial states); w (W, d);
    bias (d,) or None. out[:, t] = bias + sum_k w[k] src[:, p + t - (W-1-k)] over the taps
    that fall inside src. Returns out (b, L, d), contiguous. (Here p is a count of past
    steps, not the notation's headdim.)"""

    @staticmethod
    def forward(ctx, src, w, bias, p, silu):
        W = w.shape[0]
        L = src.shape[1] - p
        pre = src[:, p:] * w[W - 1]
        if bias is not None:
            pre += bias
        for k, t0, a, e in _taps(W, L, p):
            pre[:, t0:].addcmul_(src[:, a:e], w[k])
        ctx.silu, ctx.has_bias, ctx.p = silu, bias is not None, p
        ctx.save_for_backward(src, w, pre if silu else None)
        return F.silu(pre) if silu else pre

    @staticmethod
    def backward(ctx, g):
        src, w, pre = ctx.saved_tensors
        W, p = w.shape[0], ctx.p
        L = src.shape[1] - p
        gpre = _silu_grad(g, pre) if ctx.silu else g.contiguous()
        gsrc = gw = gbias = None
        if ctx.needs_input_grad[0]:
            gsrc = src.new_empty(src.shape)
            gsrc[:, :p].zero_()
            torch.mul(gpre, w[W - 1], out=gsrc[:, p:])
            for k, t0, a, e in _taps(W, L, p):
                gsrc[:, a:e].addcmul_(gpre[:, t0:], w[k])
        if ctx.needs_input_grad[1]:
            gw = src.new_empty(w.shape)
            gw[W - 1] = (gpre * src[:, p:]).sum((0, 1))
            for k in range(W - 1):
                gw[k] = 0
            for k, t0, a, e in _taps(W, L, p):
                gw[k] = (gpre[:, t0:] * src[:, a:e]).sum((0, 1))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gbias = gpre.sum((0, 1))
        return gsrc, gw, gbias, None, None


def _taps(W, L, p):
    """(k, t0, a, e) for the taps k < W-1 that reach src: out[t0:] += w[k] src[a:e]."""
    for k in range(W - 1):
        s = W - 1 - k  # this tap reads s steps back
        t0 = max(0, s - p)
        a, e = p + t0 - s, p + L - s
        if e > a:
            yield k, t0, a, e


def causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """Same contract as :func:`~mimetic.ops.causal_conv1d.reference.causal_conv1d_ref`."""
    dim, W = weight.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    src = x.transpose(1, 2).to(compute)  # (batch, L, dim), a view for Mamba's inputs
    if src.stride(2) != 1:  # truly (batch, dim, L) memory: one transposing copy
        src = src.contiguous()
    p = 0
    if initial_states is not None:
        p = W - 1
        src = torch.cat([initial_states.to(compute).transpose(1, 2), src], dim=1)
    out = _CausalConv.apply(src, weight.to(compute).t().contiguous(),
                            None if bias is None else bias.to(compute), p,
                            activation in ("silu", "swish"))
    out = out.to(x.dtype).transpose(1, 2)  # (batch, dim, L) view of (batch, L, dim)
    if return_final_states:
        past = (initial_states.to(x.dtype) if initial_states is not None
                else x.new_zeros(x.shape[0], dim, W - 1))
        final = torch.cat([past, x], dim=-1)
        return out, final[:, :, final.shape[-1] - (W - 1):]
    return out
