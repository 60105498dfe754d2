"""Causal depthwise conv1d (+ SiLU) as Triton kernels, forward and backward.

out[b, d, t] = act(bias[d] + sum_k w[d, k] * xp[b, d, t - (W-1) + k]), where xp is x
preceded by the W-1 ``initial_states`` (zeros if absent). One program computes a
(BLOCK_D, BLOCK_T) output tile: W shifted tile loads (the overlap hits L1), W multiply-
adds per element in float32, the activation, one store -- a single pass over x and out.

Backward (``torch.autograd.Function``), two kernels:
1. recompute the pre-activation, dpre = dout * act'(pre) (stored in float32), and the
   per-tile partial sums of dw[d, k] = sum dpre[t] xp[t - (W-1) + k] and dbias = sum dpre;
2. dxp[j] = sum_k w[k] dpre[j + (W-1) - k] for j in [-(W-1), L): j >= 0 is dx, j < 0 is
   d(initial_states).
The partial sums (batch x time-tiles rows) are added up in PyTorch.

Layouts: x may be contiguous (batch, dim, L) or channels last (a transposed view of
(batch, L, dim) activations, as Mamba-2 has them): every tensor is addressed through its
strides, and the tile is long along the contiguous dimension.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["causal_conv1d_triton"]


@triton.jit
def _conv_pre(x_ptr, h0_ptr, w_ptr, bias_ptr, pid_b, offs_d, offs_t, mask_d, dim, L,
              s_x_b, s_x_d, s_x_l, W: tl.constexpr, HAS_BIAS: tl.constexpr,
              HAS_H0: tl.constexpr):
    """Pre-activation tile (BLOCK_D, BLOCK_T), float32."""
    acc = tl.zeros([offs_d.shape[0], offs_t.shape[0]], dtype=tl.float32)
    x_row = x_ptr + pid_b * s_x_b + offs_d[:, None] * s_x_d
    h_row = h0_ptr + (pid_b * dim + offs_d[:, None]) * (W - 1)
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        j = offs_t[None, :] - (W - 1) + k                      # input position, may be < 0
        xk = tl.load(x_row + j * s_x_l, mask=mask_d[:, None] & (j >= 0) & (j < L), other=0.0)
        xk = xk.to(tl.float32)
        if HAS_H0:
            hk = tl.load(h_row + (W - 1) + j, mask=mask_d[:, None] & (j < 0), other=0.0)
            xk += hk.to(tl.float32)
        acc += wk[:, None] * xk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, h0_ptr, w_ptr, bias_ptr, out_ptr, dim, L, s_x_b, s_x_d, s_x_l,
                     s_o_b, s_o_d, s_o_l, W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
                     SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_d = offs_d < dim
    pre = _conv_pre(x_ptr, h0_ptr, w_ptr, bias_ptr, pid_b, offs_d, offs_t, mask_d, dim, L,
                    s_x_b, s_x_d, s_x_l, W, HAS_BIAS, HAS_H0)
    if SILU:
        pre = pre * tl.sigmoid(pre)
    m = mask_d[:, None] & (offs_t[None, :] < L)
    tl.store(out_ptr + pid_b * s_o_b + offs_d[:, None] * s_o_d + offs_t[None, :] * s_o_l,
             pre.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_dpre_kernel(x_ptr, h0_ptr, w_ptr, bias_ptr, dout_ptr, dpre_ptr, dw_ptr, db_ptr,
                          dim, L, s_x_b, s_x_d, s_x_l, s_g_b, s_g_d, s_g_l,
                          W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
                          SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """dpre (float32, strided like dout), and partials dw (b, n_tblocks, dim, W),
    db (b, n_tblocks, dim)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(2)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_d = offs_d < dim
    m = mask_d[:, None] & (offs_t[None, :] < L)
    g_offs = pid_b * s_g_b + offs_d[:, None] * s_g_d + offs_t[None, :] * s_g_l
    dpre = tl.load(dout_ptr + g_offs, mask=m, other=0.0).to(tl.float32)
    if SILU:
        pre = _conv_pre(x_ptr, h0_ptr, w_ptr, bias_ptr, pid_b, offs_d, offs_t, mask_d, dim, L,
                        s_x_b, s_x_d, s_x_l, W, HAS_BIAS, HAS_H0)
        sg = tl.sigmoid(pre)
        dpre = dpre * sg * (1.0 + pre * (1.0 - sg))
    tl.store(dpre_ptr + g_offs, dpre, mask=m)
    part = (pid_b * tl.num_programs(2) + pid_t) * dim + offs_d
    tl.store(db_ptr + part, tl.sum(dpre, axis=1), mask=mask_d)
    x_row = x_ptr + pid_b * s_x_b + offs_d[:, None] * s_x_d
    h_row = h0_ptr + (pid_b * dim + offs_d[:, None]) * (W - 1)
    for k in tl.static_range(W):
        j = offs_t[None, :] - (W - 1) + k
        xk = tl.load(x_row + j * s_x_l, mask=mask_d[:, None] & (j >= 0) & (j < L), other=0.0)
        xk = xk.to(tl.float32)
        if HAS_H0:
            hk = tl.load(h_row + (W - 1) + j, mask=mask_d[:, None] & (j < 0), other=0.0)
            xk += hk.to(tl.float32)
        tl.store(dw_ptr + part * W + k, tl.sum(dpre * xk, axis=1), mask=mask_d)


@triton.jit
def _conv_bwd_dx_kernel(dpre_ptr, w_ptr, dx_ptr, dh0_ptr, dim, L, s_g_b, s_g_d, s_g_l,
                        s_o_b, s_o_d, s_o_l, W: tl.constexpr, HAS_H0: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """dxp[j] = sum_k w[k] dpre[j + (W-1) - k] for the tile of positions j starting at
    -(W-1): j >= 0 goes to dx, j < 0 to d(initial_states)."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_j = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T) - (W - 1)
    mask_d = offs_d < dim
    acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    dpre_row = dpre_ptr + pid_b * s_g_b + offs_d[:, None] * s_g_d
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        t = offs_j[None, :] + (W - 1) - k
        g = tl.load(dpre_row + t * s_g_l, mask=mask_d[:, None] & (t >= 0) & (t < L), other=0.0)
        acc += wk[:, None] * g
    m = mask_d[:, None] & (offs_j[None, :] >= 0) & (offs_j[None, :] < L)
    tl.store(dx_ptr + pid_b * s_o_b + offs_d[:, None] * s_o_d + offs_j[None, :] * s_o_l,
             acc.to(dx_ptr.dtype.element_ty), mask=m)
    if HAS_H0:
        mh = mask_d[:, None] & (offs_j[None, :] < 0)
        tl.store(dh0_ptr + (pid_b * dim + offs_d[:, None]) * (W - 1) + (W - 1) + offs_j[None, :],
                 acc.to(dh0_ptr.dtype.element_ty), mask=mh)


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


def _like(x: torch.Tensor, dtype=None) -> torch.Tensor:
    """A new (batch, dim, L) tensor stored like x: channels last when x's channels are
    (batch, L, dim) storage seen through a transpose, else contiguous."""
    batch, dim, L = x.shape
    if x.stride(1) == 1 and x.stride(2) != 1:
        return torch.empty(batch, L, dim, device=x.device, dtype=dtype or x.dtype).transpose(1, 2)
    return torch.empty(batch, dim, L, device=x.device, dtype=dtype or x.dtype)


def _blocks(x: torch.Tensor) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_T): the tile is long along the contiguous dimension."""
    return (64, 32) if x.stride(1) == 1 and x.stride(2) != 1 else (16, 128)


class _CausalConv1dFn(torch.autograd.Function):
    """x (batch, dim, L) with unit stride along L or along dim (channels last, as a
    transposed view of (batch, L, dim) activations): taken as is, no copy; the output and
    the input gradient come in the same layout."""

    @staticmethod
    def forward(ctx, x, weight, bias, initial_states, silu):
        if x.stride(2) != 1 and x.stride(1) != 1:
            x = x.contiguous()
        weight = weight.contiguous()
        h0 = initial_states.contiguous() if initial_states is not None else None
        batch, dim, L = x.shape
        W = weight.shape[1]
        out = _like(x)
        bd, bt = _blocks(x)
        grid = (batch, triton.cdiv(dim, bd), triton.cdiv(L, bt))
        _conv_fwd_kernel[grid](
            x, h0 if h0 is not None else x, weight, bias if bias is not None else weight, out,
            dim, L, *_strides(x), *_strides(out),
            W=W, HAS_BIAS=bias is not None, HAS_H0=h0 is not None, SILU=silu,
            BLOCK_D=bd, BLOCK_T=bt)
        ctx.save_for_backward(x, weight, bias, h0)
        ctx.silu = silu
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias, h0 = ctx.saved_tensors
        batch, dim, L = x.shape
        W = weight.shape[1]
        if dout.stride(2) != 1 and dout.stride(1) != 1:
            dout = dout.contiguous()
        bd, bt = _blocks(x)
        nt = triton.cdiv(L, bt)
        dpre = _like(dout, torch.float32)
        dw = torch.empty(batch, nt, dim, W, device=x.device, dtype=torch.float32)
        db = torch.empty(batch, nt, dim, device=x.device, dtype=torch.float32)
        grid = (batch, triton.cdiv(dim, bd), nt)
        _conv_bwd_dpre_kernel[grid](
            x, h0 if h0 is not None else x, weight, bias if bias is not None else weight,
            dout, dpre, dw, db, dim, L, *_strides(x), *_strides(dpre),
            W=W, HAS_BIAS=bias is not None, HAS_H0=h0 is not None, SILU=ctx.silu,
            BLOCK_D=bd, BLOCK_T=bt)
        dx = _like(x)
        dh0 = torch.empty_like(h0) if h0 is not None else None
        grid = (batch, triton.cdiv(dim, bd), triton.cdiv(L + W - 1, bt))
        _conv_bwd_dx_kernel[grid](
            dpre, weight, dx, dh0 if dh0 is not None else dx, dim, L,
            *_strides(dpre), *_strides(dx),
            W=W, HAS_H0=h0 is not None, BLOCK_D=bd, BLOCK_T=bt)
        dweight = dw.sum((0, 1)).to(weight.dtype)
        dbias = db.sum((0, 1)).to(bias.dtype) if bias is not None else None
        return dx, dweight, dbias, dh0, None


def causal_conv1d_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """Same contract as :func:`causal_conv1d_ref`: x (batch, dim, L), weight (dim, W),
    bias (dim,), initial_states (batch, dim, W-1). Returns out (batch, dim, L) in x's
    dtype and, with ``return_final_states``, the last W-1 inputs (batch, dim, W-1)."""
    if x.dtype == torch.float64:
        # The kernels compute in float32; keep float64 inputs at float64 accuracy.
        from .torch import causal_conv1d_torch

        return causal_conv1d_torch(x, weight, bias=bias, activation=activation,
                                   initial_states=initial_states,
                                   return_final_states=return_final_states)
    out = _CausalConv1dFn.apply(x, weight, bias, initial_states, activation in ("silu", "swish"))
    if return_final_states:
        W = weight.shape[1]
        past = (initial_states.to(x.dtype) if initial_states is not None
                else x.new_zeros(x.shape[0], x.shape[1], W - 1))
        padded = torch.cat([past, x], dim=-1)
        return out, padded[:, :, padded.shape[-1] - (W - 1):]
    return out
