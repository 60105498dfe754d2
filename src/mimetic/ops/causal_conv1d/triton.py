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
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["causal_conv1d_triton"]


@triton.jit
def _conv_pre(x_ptr, h0_ptr, w_ptr, bias_ptr, pid_b, offs_d, offs_t, mask_d, dim, L,
              s_x_b, s_x_d, W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr):
    """Pre-activation tile (BLOCK_D, BLOCK_T), float32."""
    acc = tl.zeros([offs_d.shape[0], offs_t.shape[0]], dtype=tl.float32)
    x_row = x_ptr + pid_b * s_x_b + offs_d[:, None] * s_x_d
    h_row = h0_ptr + (pid_b * dim + offs_d[:, None]) * (W - 1)
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        j = offs_t[None, :] - (W - 1) + k                      # input position, may be < 0
        xk = tl.load(x_row + j, mask=mask_d[:, None] & (j >= 0) & (j < L), other=0.0)
        xk = xk.to(tl.float32)
        if HAS_H0:
            hk = tl.load(h_row + (W - 1) + j, mask=mask_d[:, None] & (j < 0), other=0.0)
            xk += hk.to(tl.float32)
        acc += wk[:, None] * xk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, h0_ptr, w_ptr, bias_ptr, out_ptr, dim, L, s_x_b, s_x_d,
                     W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
                     SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_d = offs_d < dim
    pre = _conv_pre(x_ptr, h0_ptr, w_ptr, bias_ptr, pid_b, offs_d, offs_t, mask_d, dim, L,
                    s_x_b, s_x_d, W, HAS_BIAS, HAS_H0)
    if SILU:
        pre = pre * tl.sigmoid(pre)
    m = mask_d[:, None] & (offs_t[None, :] < L)
    tl.store(out_ptr + pid_b * s_x_b + offs_d[:, None] * s_x_d + offs_t[None, :],
             pre.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_dpre_kernel(x_ptr, h0_ptr, w_ptr, bias_ptr, dout_ptr, dpre_ptr, dw_ptr, db_ptr,
                          dim, L, s_x_b, s_x_d,
                          W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr,
                          SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """dpre (b, dim, L) float32, and partials dw (b, n_tblocks, dim, W), db (b, n_tblocks, dim)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(2)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_d = offs_d < dim
    m = mask_d[:, None] & (offs_t[None, :] < L)
    x_offs = pid_b * s_x_b + offs_d[:, None] * s_x_d + offs_t[None, :]
    dpre = tl.load(dout_ptr + x_offs, mask=m, other=0.0).to(tl.float32)
    if SILU:
        pre = _conv_pre(x_ptr, h0_ptr, w_ptr, bias_ptr, pid_b, offs_d, offs_t, mask_d, dim, L,
                        s_x_b, s_x_d, W, HAS_BIAS, HAS_H0)
        sg = tl.sigmoid(pre)
        dpre = dpre * sg * (1.0 + pre * (1.0 - sg))
    tl.store(dpre_ptr + (pid_b * dim + offs_d[:, None]) * L + offs_t[None, :], dpre, mask=m)
    part = (pid_b * tl.num_programs(2) + pid_t) * dim + offs_d
    tl.store(db_ptr + part, tl.sum(dpre, axis=1), mask=mask_d)
    x_row = x_ptr + pid_b * s_x_b + offs_d[:, None] * s_x_d
    h_row = h0_ptr + (pid_b * dim + offs_d[:, None]) * (W - 1)
    for k in tl.static_range(W):
        j = offs_t[None, :] - (W - 1) + k
        xk = tl.load(x_row + j, mask=mask_d[:, None] & (j >= 0) & (j < L), other=0.0)
        xk = xk.to(tl.float32)
        if HAS_H0:
            hk = tl.load(h_row + (W - 1) + j, mask=mask_d[:, None] & (j < 0), other=0.0)
            xk += hk.to(tl.float32)
        tl.store(dw_ptr + part * W + k, tl.sum(dpre * xk, axis=1), mask=mask_d)


@triton.jit
def _conv_bwd_dx_kernel(dpre_ptr, w_ptr, dx_ptr, dh0_ptr, dim, L, s_x_b, s_x_d,
                        W: tl.constexpr, HAS_H0: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr):
    """dxp[j] = sum_k w[k] dpre[j + (W-1) - k] for the tile of positions j starting at
    -(W-1): j >= 0 goes to dx, j < 0 to d(initial_states)."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_j = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T) - (W - 1)
    mask_d = offs_d < dim
    acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    dpre_row = dpre_ptr + (pid_b * dim + offs_d[:, None]) * L
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        t = offs_j[None, :] + (W - 1) - k
        g = tl.load(dpre_row + t, mask=mask_d[:, None] & (t >= 0) & (t < L), other=0.0)
        acc += wk[:, None] * g
    m = mask_d[:, None] & (offs_j[None, :] >= 0) & (offs_j[None, :] < L)
    tl.store(dx_ptr + pid_b * s_x_b + offs_d[:, None] * s_x_d + offs_j[None, :],
             acc.to(dx_ptr.dtype.element_ty), mask=m)
    if HAS_H0:
        mh = mask_d[:, None] & (offs_j[None, :] < 0)
        tl.store(dh0_ptr + (pid_b * dim + offs_d[:, None]) * (W - 1) + (W - 1) + offs_j[None, :],
                 acc.to(dh0_ptr.dtype.element_ty), mask=mh)


_BLOCK_D, _BLOCK_T = 16, 128


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_states, silu):
        x = x.contiguous()
        weight = weight.contiguous()
        h0 = initial_states.contiguous() if initial_states is not None else None
        batch, dim, L = x.shape
        W = weight.shape[1]
        out = torch.empty_like(x)
        grid = (batch, triton.cdiv(dim, _BLOCK_D), triton.cdiv(L, _BLOCK_T))
        _conv_fwd_kernel[grid](
            x, h0 if h0 is not None else x, weight, bias if bias is not None else weight, out,
            dim, L, x.stride(0), x.stride(1),
            W=W, HAS_BIAS=bias is not None, HAS_H0=h0 is not None, SILU=silu,
            BLOCK_D=_BLOCK_D, BLOCK_T=_BLOCK_T)
        ctx.save_for_backward(x, weight, bias, h0)
        ctx.silu = silu
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias, h0 = ctx.saved_tensors
        batch, dim, L = x.shape
        W = weight.shape[1]
        dout = dout.contiguous()          # same (b, d, L) contiguous layout as x
        nt = triton.cdiv(L, _BLOCK_T)
        dpre = torch.empty(batch, dim, L, device=x.device, dtype=torch.float32)
        dw = torch.empty(batch, nt, dim, W, device=x.device, dtype=torch.float32)
        db = torch.empty(batch, nt, dim, device=x.device, dtype=torch.float32)
        grid = (batch, triton.cdiv(dim, _BLOCK_D), nt)
        _conv_bwd_dpre_kernel[grid](
            x, h0 if h0 is not None else x, weight, bias if bias is not None else weight,
            dout, dpre, dw, db, dim, L, x.stride(0), x.stride(1),
            W=W, HAS_BIAS=bias is not None, HAS_H0=h0 is not None, SILU=ctx.silu,
            BLOCK_D=_BLOCK_D, BLOCK_T=_BLOCK_T)
        dx = torch.empty_like(x)
        dh0 = torch.empty_like(h0) if h0 is not None else None
        grid = (batch, triton.cdiv(dim, _BLOCK_D), triton.cdiv(L + W - 1, _BLOCK_T))
        _conv_bwd_dx_kernel[grid](
            dpre, weight, dx, dh0 if dh0 is not None else dx, dim, L, x.stride(0), x.stride(1),
            W=W, HAS_H0=h0 is not None, BLOCK_D=_BLOCK_D, BLOCK_T=_BLOCK_T)
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
