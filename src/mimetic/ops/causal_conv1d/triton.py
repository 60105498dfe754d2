"""Causal depthwise conv1d (+ SiLU) as Triton kernels, forward and backward.

out[b, d, t] = act(bias[d] + sum_k w[d, k] * xp[b, d, t - (W-1) + k]), where xp is x
preceded by the W-1 ``initial_states`` (zeros if absent). One program computes a
(BLOCK_D, BLOCK_T) output tile: W shifted tile loads (the overlap hits L1), W multiply-
adds per element in float32, the activation, one store -- a single pass over x and out.

Backward (``torch.autograd.Function``), two kernels:
1. recompute the pre-activation, dpre = dout * act'(pre) (stored in float32), and the
   per-tile partial sums of dw[d, k] = sum dpre[t] xp[t - (W-1) + k] and dbias = sum dpre
   (the x tiles are loaded once for both);
2. dxp[j] = sum_k w[k] dpre[j + (W-1) - k] for j in [-(W-1), L): j >= 0 is dx, j < 0 is
   d(initial_states).
The partial sums (batch x time-tiles rows, stored (W, dim) per row: contiguous along the
channels) are added up in PyTorch.

Layouts: x may be contiguous (batch, dim, L) or channels last (a transposed view of
(batch, L, dim) activations, as Mamba-2 has them, possibly a column slice of a wider
projection): every tensor is addressed through its strides, the output and gradients
are allocated in x's layout, and the wrapper picks the tile for the layout (``TILES_L``,
``TILES_CL``):
- L contiguous: 16 channels x 128 steps, the time axis along the threads;
- channels last: wide in channels, short in time, VEC channels per thread so a warp's
  loads/stores are runs of contiguous channels (16-byte vectors for bf16 at VEC 8); the
  W-1 halo steps are other rows, L1 hits. The time stride of a slice (Mamba-2: 3352) is
  rarely a multiple of 16, so the compiler cannot see the rows' alignment: the kernels
  are told (``CL``, ``VEC``: batch and time strides are multiples of VEC elements).
  Initial states are taken (copied if need be) in x's layout too, and read through the
  same load as x (pointers selected by position) when their dtype is x's.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .layout import channels_last as _channels_last
from .layout import final_states
from .layout import in_layout as _in_layout
from .layout import like as _like
from .shifted import causal_conv1d_torch

__all__ = ["causal_conv1d_triton"]


@triton.jit
def _tile_ptrs(base, pid_b, offs_d, offs_t, s_b, s_d, s_l, CL: tl.constexpr, VEC: tl.constexpr):
    """Pointers of the (BLOCK_D, BLOCK_T) tile (offs_d, offs_t) of a (batch, dim, L) tensor.
    CL (channels last, s_d == 1): the batch and time strides are multiples of VEC (the
    wrapper checked), so rows of VEC channels are aligned and vectorize."""
    ob = pid_b * s_b
    ot = offs_t * s_l
    if CL and VEC > 1:
        ob = tl.multiple_of(ob, VEC)
        ot = tl.multiple_of(ot, VEC)
    return base + ob + offs_d[:, None] * s_d + ot[None, :]


@triton.jit
def _x_tap(x_ptr, h0_ptr, pid_b, offs_d, j, mask_d, L, s_x_b, s_x_d, s_x_l, s_h_b, s_h_d, s_h_l,
           W: tl.constexpr, HAS_H0: tl.constexpr, CL: tl.constexpr, VEC: tl.constexpr):
    """xp at the input positions j of a tile, float32: x, or for j < 0 (only in the first
    time tile) the initial states h0[..., W-1+j], stored in x's layout."""
    ptrs = _tile_ptrs(x_ptr, pid_b, offs_d, j, s_x_b, s_x_d, s_x_l, CL, VEC)
    if HAS_H0:
        h_ptrs = _tile_ptrs(h0_ptr, pid_b, offs_d, j + (W - 1), s_h_b, s_h_d, s_h_l, CL, VEC)
        if h0_ptr.dtype == x_ptr.dtype:  # one load through the selected pointers
            xk = tl.load(tl.where(j[None, :] >= 0, ptrs, h_ptrs),
                         mask=mask_d[:, None] & (j[None, :] < L), other=0.0).to(tl.float32)
        else:
            xk = tl.load(ptrs, mask=mask_d[:, None] & (j[None, :] >= 0) & (j[None, :] < L),
                         other=0.0).to(tl.float32)
            xk += tl.load(h_ptrs, mask=mask_d[:, None] & (j[None, :] < 0),
                          other=0.0).to(tl.float32)
    else:
        xk = tl.load(ptrs, mask=mask_d[:, None] & (j[None, :] >= 0) & (j[None, :] < L),
                     other=0.0).to(tl.float32)
    return xk


@triton.jit
def _conv_pre(x_ptr, h0_ptr, w_ptr, bias_ptr, pid_b, offs_d, offs_t, mask_d, L,
              s_x_b, s_x_d, s_x_l, s_h_b, s_h_d, s_h_l, W: tl.constexpr, HAS_BIAS: tl.constexpr,
              HAS_H0: tl.constexpr, CL: tl.constexpr, VEC: tl.constexpr):
    """Pre-activation tile (BLOCK_D, BLOCK_T), float32."""
    acc = tl.zeros([offs_d.shape[0], offs_t.shape[0]], dtype=tl.float32)
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        xk = _x_tap(x_ptr, h0_ptr, pid_b, offs_d, offs_t - (W - 1) + k, mask_d, L,
                    s_x_b, s_x_d, s_x_l, s_h_b, s_h_d, s_h_l, W, HAS_H0, CL, VEC)
        acc += wk[:, None] * xk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, h0_ptr, w_ptr, bias_ptr, out_ptr, dim, L, s_x_b, s_x_d, s_x_l,
                     s_h_b, s_h_d, s_h_l, s_o_b, s_o_d, s_o_l, W: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, SILU: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
                     CL: tl.constexpr, VEC: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_d = offs_d < dim
    pre = _conv_pre(x_ptr, h0_ptr, w_ptr, bias_ptr, pid_b, offs_d, offs_t, mask_d, L,
                    s_x_b, s_x_d, s_x_l, s_h_b, s_h_d, s_h_l, W, HAS_BIAS, HAS_H0, CL, VEC)
    if SILU:
        pre = pre * tl.sigmoid(pre)
    m = mask_d[:, None] & (offs_t[None, :] < L)
    tl.store(_tile_ptrs(out_ptr, pid_b, offs_d, offs_t, s_o_b, s_o_d, s_o_l, CL, VEC),
             pre.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_dpre_kernel(x_ptr, h0_ptr, w_ptr, bias_ptr, dout_ptr, dpre_ptr, dw_ptr, db_ptr,
                          dim, L, s_x_b, s_x_d, s_x_l, s_h_b, s_h_d, s_h_l, s_g_b, s_g_d, s_g_l,
                          s_p_b, s_p_d, s_p_l,
                          W: tl.constexpr, WP: tl.constexpr, HAS_BIAS: tl.constexpr,
                          HAS_H0: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_T: tl.constexpr, CL: tl.constexpr, VEC: tl.constexpr):
    """dpre (float32; dout and dpre in x's layout), and the tile's partial sums
    dw (b, n_tblocks, W, dim), db (b, n_tblocks, dim). WP: W rounded up to a power of 2."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(2)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_d = offs_d < dim
    m = mask_d[:, None] & (offs_t[None, :] < L)
    dpre = tl.load(_tile_ptrs(dout_ptr, pid_b, offs_d, offs_t, s_g_b, s_g_d, s_g_l, CL, VEC),
                   mask=m, other=0.0).to(tl.float32)
    if SILU:
        pre = _conv_pre(x_ptr, h0_ptr, w_ptr, bias_ptr, pid_b, offs_d, offs_t, mask_d, L,
                        s_x_b, s_x_d, s_x_l, s_h_b, s_h_d, s_h_l, W, HAS_BIAS, HAS_H0, CL, VEC)
        sg = tl.sigmoid(pre)
        dpre = dpre * sg * (1.0 + pre * (1.0 - sg))
    # The x tiles of _conv_pre again, with no store in between: the compiler reuses the
    # loaded tiles. The W sums are kept as columns of dwacc and stored last.
    kk = tl.arange(0, WP)
    dwacc = tl.zeros([BLOCK_D, WP], dtype=tl.float32)
    for k in tl.static_range(W):
        xk = _x_tap(x_ptr, h0_ptr, pid_b, offs_d, offs_t - (W - 1) + k, mask_d, L,
                    s_x_b, s_x_d, s_x_l, s_h_b, s_h_d, s_h_l, W, HAS_H0, CL, VEC)
        dwacc = tl.where(kk[None, :] == k, tl.sum(dpre * xk, axis=1)[:, None], dwacc)
    tl.store(_tile_ptrs(dpre_ptr, pid_b, offs_d, offs_t, s_p_b, s_p_d, s_p_l, CL, VEC),
             dpre, mask=m)
    part = pid_b * tl.num_programs(2) + pid_t
    tl.store(db_ptr + part * dim + offs_d, tl.sum(dpre, axis=1), mask=mask_d)
    tl.store(dw_ptr + part * (W * dim) + kk[None, :] * dim + offs_d[:, None], dwacc,
             mask=mask_d[:, None] & (kk[None, :] < W))


@triton.jit
def _conv_bwd_dx_kernel(dpre_ptr, w_ptr, dx_ptr, dh0_ptr, dim, L, s_g_b, s_g_d, s_g_l,
                        s_o_b, s_o_d, s_o_l, s_h_b, s_h_d, s_h_l, W: tl.constexpr,
                        HAS_H0: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
                        CL: tl.constexpr, VEC: tl.constexpr):
    """dxp[j] = sum_k w[k] dpre[j + (W-1) - k] for the tile of positions j starting at
    -(W-1): j >= 0 goes to dx, j < 0 to d(initial_states) (stored in x's layout)."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    j0 = tl.program_id(2) * BLOCK_T - (W - 1)
    offs_j = j0 + tl.arange(0, BLOCK_T)
    mask_d = offs_d < dim
    acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + offs_d * W + k, mask=mask_d, other=0.0).to(tl.float32)
        t = offs_j + (W - 1) - k
        g = tl.load(_tile_ptrs(dpre_ptr, pid_b, offs_d, t, s_g_b, s_g_d, s_g_l, CL, VEC),
                    mask=mask_d[:, None] & (t[None, :] >= 0) & (t[None, :] < L), other=0.0)
        acc += wk[:, None] * g
    m = mask_d[:, None] & (offs_j[None, :] >= 0) & (offs_j[None, :] < L)
    tl.store(_tile_ptrs(dx_ptr, pid_b, offs_d, offs_j, s_o_b, s_o_d, s_o_l, CL, VEC),
             acc.to(dx_ptr.dtype.element_ty), mask=m)
    if HAS_H0:
        if j0 < 0:                                             # only the first tile
            mh = mask_d[:, None] & (offs_j[None, :] < 0)
            tl.store(_tile_ptrs(dh0_ptr, pid_b, offs_d, offs_j + (W - 1), s_h_b, s_h_d, s_h_l,
                                CL, VEC), acc.to(dh0_ptr.dtype.element_ty), mask=mh)


def _strides(t):
    return t.stride(0), t.stride(1), t.stride(2)


# Tile of each kernel: (BLOCK_D, BLOCK_T, num_warps, vector cap in elements).
# L contiguous (Mamba-1): 16 channels x 128 steps (measured on an H100); the vector cap is
# unused (the time stride is 1, alignment comes from the specialization on L % 16).
TILES_L = dict(fwd=(16, 128, 4, 1), dpre=(16, 128, 4, 1), dx=(16, 128, 4, 1))
# Channels last (Mamba-2), from the sm_90 PTX (benchmarks/ptxas_report.py's method; not
# timed yet): forward 128 x 32 with 8 channels a thread (16-byte bf16 loads and stores);
# dpre 32 x 64 with 4 channels a thread: its float32 dpre store is 4 a thread at most
# (16 bytes), and a wider bf16 load layout would cost a full-tile layout conversion;
# 64 steps keep the dw/db partial rows (batch x L/64) small, 96 registers; dx 128 x 16, 8
# channels a thread (two 16-byte float32 loads of dpre, a 16-byte bf16 store), 80 registers.
TILES_CL = dict(fwd=(128, 32, 4, 8), dpre=(32, 64, 4, 4), dx=(128, 16, 4, 8))


def _vec(cap: int, *ts: torch.Tensor) -> int:
    """The largest power of two <= cap dividing the batch and time strides of every t."""
    v = cap
    while v > 1 and any(t.stride(i) % v for t in ts for i in (0, 2) if t.shape[i] > 1):
        v //= 2
    return v


def _meta(op: str, x: torch.Tensor, *ts: torch.Tensor) -> dict:
    """Tile and layout constexprs of kernel ``op`` for x's layout; ``ts``: the (batch, dim, L)
    tensors the kernel reads or writes (all in x's layout)."""
    cl = _channels_last(x)
    bd, bt, nw, cap = (TILES_CL if cl else TILES_L)[op]
    return dict(BLOCK_D=bd, BLOCK_T=bt, num_warps=nw, CL=cl, VEC=_vec(cap, *ts) if cl else 1)


class _CausalConv1dFn(torch.autograd.Function):
    """x (batch, dim, L) with unit stride along L or along dim (channels last, as a
    transposed view of (batch, L, dim) activations): taken as is, no copy; the output and
    the input gradient come in the same layout."""

    @staticmethod
    def forward(ctx, x, weight, bias, initial_states, silu):
        if x.stride(2) != 1 and x.stride(1) != 1:
            x = x.contiguous()
        weight = weight.contiguous()
        h0 = _in_layout(initial_states, x) if initial_states is not None else None
        batch, dim, L = x.shape
        W = weight.shape[1]
        out = _like(x)
        meta = _meta("fwd", x, x, out, *([h0] if h0 is not None else []))
        grid = (batch, triton.cdiv(dim, meta["BLOCK_D"]), triton.cdiv(L, meta["BLOCK_T"]))
        _conv_fwd_kernel[grid](
            x, h0 if h0 is not None else x, weight, bias if bias is not None else weight, out,
            dim, L, *_strides(x), *_strides(h0 if h0 is not None else x), *_strides(out),
            W=W, HAS_BIAS=bias is not None, HAS_H0=h0 is not None, SILU=silu, **meta)
        ctx.save_for_backward(x, weight, bias, h0)
        ctx.silu = silu
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias, h0 = ctx.saved_tensors
        batch, dim, L = x.shape
        W = weight.shape[1]
        dout = _in_layout(dout, x)  # as is from autograd: out's layout, which is x's
        dpre = _like(x, torch.float32)
        hs = [h0] if h0 is not None else []
        meta = _meta("dpre", x, x, dout, dpre, *hs)
        nt = triton.cdiv(L, meta["BLOCK_T"])
        dw = torch.empty(batch, nt, W, dim, device=x.device, dtype=torch.float32)
        db = torch.empty(batch, nt, dim, device=x.device, dtype=torch.float32)
        grid = (batch, triton.cdiv(dim, meta["BLOCK_D"]), nt)
        _conv_bwd_dpre_kernel[grid](
            x, h0 if h0 is not None else x, weight, bias if bias is not None else weight,
            dout, dpre, dw, db, dim, L, *_strides(x), *_strides(h0 if h0 is not None else x),
            *_strides(dout), *_strides(dpre),
            W=W, WP=triton.next_power_of_2(W), HAS_BIAS=bias is not None,
            HAS_H0=h0 is not None, SILU=ctx.silu, **meta)
        dx = _like(x)
        dh0 = _like(x, h0.dtype, W - 1) if h0 is not None else None
        meta = _meta("dx", x, dpre, dx, *([dh0] if dh0 is not None else []))
        grid = (batch, triton.cdiv(dim, meta["BLOCK_D"]),
                triton.cdiv(L + W - 1, meta["BLOCK_T"]))
        _conv_bwd_dx_kernel[grid](
            dpre, weight, dx, dh0 if dh0 is not None else dx, dim, L,
            *_strides(dpre), *_strides(dx), *_strides(dh0 if dh0 is not None else dx),
            W=W, HAS_H0=h0 is not None, **meta)
        dweight = dw.sum((0, 1)).t().to(weight.dtype, memory_format=torch.contiguous_format)
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
    """Same contract as :func:`~mimetic.ops.causal_conv1d.reference.causal_conv1d_ref`
    (float64 inputs take the shifted PyTorch path: the kernels compute in float32)."""
    if x.dtype == torch.float64:
        # The kernels compute in float32; keep float64 inputs at float64 accuracy.
        return causal_conv1d_torch(x, weight, bias=bias, activation=activation,
                                   initial_states=initial_states,
                                   return_final_states=return_final_states)
    out = _CausalConv1dFn.apply(x, weight, bias, initial_states, activation in ("silu", "swish"))
    if return_final_states:
        return out, final_states(x, initial_states, weight.shape[1])
    return out
