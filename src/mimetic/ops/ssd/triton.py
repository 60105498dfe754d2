"""Mamba-2 SSD chunked scan in Triton: forward and backward kernels.

Per batch b, head h (group g), chunk c of Q = chunk_size steps, with w_t = dt'_t the
processed time step (bias, softplus, clamp), a_t = w_t A[h] <= 0 and cs_t its in-chunk
cumulative sum (cs_last = the chunk's total log-decay):

Forward
0. time steps (``_ssd_dt_kernel``): w_t, cs_t and cs_last into small float32 buffers that
   every later kernel reads (no kernel re-derives them);
1. chunk states (``_ssd_chunk_state_kernel``, one program per (b, h, c)):
       s_c = sum_t exp(cs_last - cs_t) w_t x_t B_t^T                    (P, N), a matmul;
2. state passing (``_ssd_pass_kernel``): S_{c+1} = exp(cs_last_c) S_c + s_c from the
   initial state, sequential over chunks, parallel over (b, h, P*N); S_nc is the final
   state;
3. outputs (``_ssd_scan_kernel``, one program per (b, h, c, row block)):
       y_i = exp(cs_i) C_i S_c^T + sum_{j <= i} (C_i . B_j) exp(cs_i - cs_j) w_j x_j
             + D x_i,   out = y * silu(z)
   with the quadratic part as blocked matmuls (C B^T masked and decayed, times x).

Backward (dy = dout * silu(z), fused with the gate's own gradient into a recomputation
of the outputs; G_c = gradient w.r.t. the state leaving chunk c)
4. U_c = sum_i exp(cs_i) dy_i^T C_i  (kernel 1 with dy, C and weights exp(cs_i));
5. reverse state passing (``_ssd_pass_bwd_kernel``): G_{c-1} = exp(cs_last_c) G_c + U_c
   from the final state's gradient; G before chunk 0 is d(initial state); also
   exp(cs_last_c) <G_c, S_c>, the state passing's share of d cs_last_c;
6. per column block j (``_ssd_bwd_dx_kernel``), looping over row blocks i >= j:
       dx_j = w_j sum_i exp(cs_i - cs_j) (C_i . B_j) dy_i + exp(cs_last - cs_j) w_j G_c B_j + D dy_j
       dB_j = w_j sum_i exp(cs_i - cs_j) (dy_i . x_j) C_i + exp(cs_last - cs_j) w_j G_c^T x_j
       dw_j = sum_i exp(cs_i - cs_j) (C_i . B_j)(dy_i . x_j) + exp(cs_last - cs_j) x_j^T G_c B_j
   (dB summed in registers over several heads of a group), and dD's partial sums;
7. per row block i (``_ssd_bwd_dc_kernel``), looping over column blocks j <= i:
       dC_i = exp(cs_i) dy_i S_c + sum_j exp(cs_i - cs_j) w_j (dy_i . x_j) B_j
   and the log-decay gradient of these outputs: for each step k, the sum of the pair
   terms M_ij = (dy_i . x_j)(C_i . B_j) exp(cs_i - cs_j) w_j over j < k <= i, formed
   directly (as a difference of row and column sums it would cancel the large diagonal
   terms and lose digits of dA, the more the longer the chunk);
8. per chunk (``_ssd_bwd_dt_kernel``, one program per (b, h, c), float64 sums): d a_k,
   the gradient of step k's log-decay, sums every term whose decay spans step k: the
   output pairs j < k <= i (from 7), the state entering the chunk seen at rows i >= k
   (reverse cumsum of 7's state term), the chunk's own state from steps j < k (exclusive
   cumsum of 6's) and the state passed on (5); then d w += d a A, and the time-step
   transform's backward (clamp, softplus, bias) by hand into ddt; dA = sum d a w and
   d dt_bias as per-chunk partial sums, added up in PyTorch, as are dB and dC over the
   head splits.
Every exponent is <= 0 (A < 0, i >= j; masked entries are -inf before the exp), so
nothing overflows. Matmuls take bf16/fp16 operands for half inputs (float32
accumulation) and float32 ones for float32 inputs (exact, "ieee", unless
:data:`F32_PRECISION` says otherwise).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._triton_math import _softplus
from .chunked import ssd_scan_torch
from .step_triton import _inner_contiguous

__all__ = ["ssd_scan_triton"]


@triton.jit
def _ssd_dt_kernel(dt_ptr, A_ptr, bias_ptr, w_ptr, cs_ptr, cslast_ptr, L, H, Q, n_chunks,
                   lo, hi, s_dt_b, s_dt_l,
                   HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr,
                   BQ: tl.constexpr):
    """w = processed dt (0 past the end, so padded steps are identities), cs = in-chunk
    cumsum of w A, into (b, h, n_chunks * Q) buffers; cs_last into (b, h, n_chunks)."""
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs = tl.arange(0, BQ)
    t = c * Q + offs
    m = (offs < Q) & (t < L)
    dt = tl.load(dt_ptr + b * s_dt_b + t * s_dt_l + h, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt = dt + tl.load(bias_ptr + h).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    if CLAMP:
        dt = tl.minimum(tl.maximum(dt, lo), hi)
    w = tl.where(m, dt, 0.0)
    a = w * tl.load(A_ptr + h).to(tl.float32)
    row = (b * H + h) * n_chunks * Q + t
    tl.store(w_ptr + row, w, mask=offs < Q)
    tl.store(cs_ptr + row, tl.cumsum(a, axis=0), mask=offs < Q)
    tl.store(cslast_ptr + (b * H + h) * n_chunks + c, tl.sum(a))


@triton.jit
def _ssd_chunk_state_kernel(X_ptr, Y_ptr, w_ptr, cs_ptr, cslast_ptr, out_ptr,
                            L, H, P, N, Q, heads_per_group, n_chunks,
                            s_x_b, s_x_l, s_y_b, s_y_l,
                            FORWARD: tl.constexpr, DOT_F32: tl.constexpr, F32_PRECISION: tl.constexpr,
                            BQ: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """out[b, c, h] = sum_t weight_t X_t^T Y_t over chunk c, (P, N) per head, where X is
    (b, L, H, P)-strided and Y (b, L, G, N)-strided. Forward: X = x, Y = B and
    weight = exp(cs_last - cs_t) w_t (the chunk's own state). Backward: X = dy, Y = C and
    weight = exp(cs_t) (the gradient reaching the state entering the chunk)."""
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    g = h // heads_per_group
    offs_q = tl.arange(0, BQ)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    row = (b * H + h) * n_chunks * Q
    cs_last = tl.load(cslast_ptr + (b * H + h) * n_chunks + c)
    acc = tl.zeros([BP, BN], dtype=tl.float32)
    for s in range(0, Q, BQ):
        t = c * Q + s + offs_q
        m = (s + offs_q < Q) & (t < L)
        cs = tl.load(cs_ptr + row + t, mask=m, other=0.0)
        if FORWARD:
            wt = tl.exp(cs_last - cs) * tl.load(w_ptr + row + t, mask=m, other=0.0)
        else:
            wt = tl.exp(cs)
        wt = tl.where(m, wt, 0.0)
        xb = tl.load(X_ptr + b * s_x_b + t[:, None] * s_x_l + h * P + offs_p[None, :],
                     mask=m[:, None] & (offs_p[None, :] < P), other=0.0)
        yb = tl.load(Y_ptr + b * s_y_b + t[:, None] * s_y_l + g * N + offs_n[None, :],
                     mask=m[:, None] & (offs_n[None, :] < N), other=0.0)
        xw = xb.to(tl.float32) * wt[:, None]
        if DOT_F32:
            acc += tl.dot(tl.trans(xw), yb.to(tl.float32), input_precision=F32_PRECISION)
        else:
            acc += tl.dot(tl.trans(xw.to(yb.dtype)), yb)
    tl.store(out_ptr + ((b * n_chunks + c) * H + h) * P * N + offs_p[:, None] * N + offs_n[None, :],
             acc, mask=(offs_p[:, None] < P) & (offs_n[None, :] < N))


@triton.jit
def _ssd_pass_kernel(states_ptr, cslast_ptr, h0_ptr, sin_ptr, final_ptr, H, PN, n_chunks,
                     HAS_H0: tl.constexpr, BLOCK: tl.constexpr):
    """sin[b, c, h] = state entering chunk c; final = state after the last chunk."""
    pid_bh = tl.program_id(0)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    if HAS_H0:
        S = tl.load(h0_ptr + (b * H + h) * PN + offs, mask=m, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BLOCK], dtype=tl.float32)
    for c in range(0, n_chunks):
        p = ((b * n_chunks + c) * H + h) * PN + offs
        s_c = tl.load(states_ptr + p, mask=m, other=0.0)
        tl.store(sin_ptr + p, S, mask=m)
        S = tl.exp(tl.load(cslast_ptr + (b * H + h) * n_chunks + c)) * S + s_c
    tl.store(final_ptr + (b * H + h) * PN + offs, S, mask=m)


@triton.jit
def _ssd_pass_bwd_kernel(U_ptr, sin_ptr, cslast_ptr, dfinal_ptr, gend_ptr, dh0_ptr, dcl_ptr,
                         H, PN, n_chunks, n_blocks,
                         HAS_DFINAL: tl.constexpr, BLOCK: tl.constexpr):
    """Reverse state passing: gend[b, c, h] = gradient w.r.t. the state leaving chunk c;
    dh0 = gradient w.r.t. the initial state; dcl[b, h, c, block] = this block's part of
    exp(cs_last_c) <gend_c, sin_c>."""
    pid_bh = tl.program_id(0)
    blk = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    if HAS_DFINAL:
        G = tl.load(dfinal_ptr + (b * H + h) * PN + offs, mask=m, other=0.0).to(tl.float32)
    else:
        G = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(0, n_chunks):
        c = n_chunks - 1 - k
        p = ((b * n_chunks + c) * H + h) * PN + offs
        tl.store(gend_ptr + p, G, mask=m)
        decay = tl.exp(tl.load(cslast_ptr + (b * H + h) * n_chunks + c))
        S = tl.load(sin_ptr + p, mask=m, other=0.0)
        tl.store(dcl_ptr + ((b * H + h) * n_chunks + c) * n_blocks + blk, decay * tl.sum(G * S))
        G = decay * G + tl.load(U_ptr + p, mask=m, other=0.0)
    tl.store(dh0_ptr + (b * H + h) * PN + offs, G, mask=m)


@triton.jit
def _ssd_scan_kernel(x_ptr, w_ptr, cs_ptr, B_ptr, C_ptr, D_ptr, z_ptr, sin_ptr, out_ptr,
                     dout_ptr, dz_ptr,
                     L, H, P, N, Q, heads_per_group, n_chunks,
                     s_x_b, s_x_l, s_y_b, s_y_l, s_b_b, s_b_l,
                     HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr,
                     GATE_BWD: tl.constexpr, DOT_F32: tl.constexpr, F32_PRECISION: tl.constexpr,
                     BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """Outputs of a row block of chunk c. With GATE_BWD (backward, z given) it writes,
    instead of the gated output, dy = dout * silu(z) into out and the gate's gradient
    into dz, from the recomputed pre-gate y (never stored). x has the (b, l) strides
    s_x_*; out, z, dout and dz the strides s_y_*."""
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    r = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    g = h // heads_per_group
    offs_m = tl.arange(0, BM)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    t0 = c * Q
    mp = offs_p[None, :] < P
    mn = offs_n[None, :] < N
    row = (b * H + h) * n_chunks * Q
    ti = t0 + r * BM + offs_m
    mi = (r * BM + offs_m < Q) & (ti < L)
    cs_i = tl.load(cs_ptr + row + ti, mask=mi, other=0.0)
    C_i = tl.load(C_ptr + b * s_b_b + ti[:, None] * s_b_l + g * N + offs_n[None, :],
                  mask=mi[:, None] & mn, other=0.0)
    # Contribution of the state entering the chunk.
    S = tl.load(sin_ptr + ((b * n_chunks + c) * H + h) * P * N + offs_p[:, None] * N
                + offs_n[None, :], mask=(offs_p[:, None] < P) & mn, other=0.0)   # (BP, BN)
    if DOT_F32:
        acc = tl.dot(C_i.to(tl.float32), tl.trans(S), input_precision=F32_PRECISION)
    else:
        acc = tl.dot(C_i, tl.trans(S.to(C_i.dtype)))
    acc = acc * tl.exp(cs_i)[:, None]
    # Quadratic part over the column blocks j <= i of this chunk. Non-finite values stay
    # causal: masked entries (j > i) are zeroed after the product (0 * NaN would be NaN), x's
    # non-finite entries enter the dot as 0 and their rows i >= j are set to NaN at the end.
    n_bad = tl.zeros((BM,), dtype=tl.int32)
    for s in range(0, (r + 1) * BM, BM):
        tj = t0 + s + offs_m
        mj = (s + offs_m < Q) & (tj < L)
        w_j = tl.load(w_ptr + row + tj, mask=mj, other=0.0)
        cs_j = tl.load(cs_ptr + row + tj, mask=mj, other=0.0)
        B_j = tl.load(B_ptr + b * s_b_b + tj[:, None] * s_b_l + g * N + offs_n[None, :],
                      mask=mj[:, None] & mn, other=0.0)
        x_j = tl.load(x_ptr + b * s_x_b + tj[:, None] * s_x_l + h * P + offs_p[None, :],
                      mask=mj[:, None] & mp, other=0.0)
        if DOT_F32:
            cb = tl.dot(C_i.to(tl.float32), tl.trans(B_j.to(tl.float32)), input_precision=F32_PRECISION)
        else:
            cb = tl.dot(C_i, tl.trans(B_j))
        causal = (ti[:, None] >= tj[None, :]) & mi[:, None] & mj[None, :]
        decay = tl.exp(tl.where(causal, cs_i[:, None] - cs_j[None, :], float("-inf")))
        mt = tl.where(causal, cb * decay * w_j[None, :], 0.0)
        fin_x = tl.abs(x_j.to(tl.float32)) < float("inf")  # False for NaN and +-inf
        x_j = tl.where(fin_x, x_j, tl.zeros_like(x_j))
        bad_j = tl.sum(tl.where(fin_x, 0, 1), axis=1) > 0
        n_bad += tl.sum(tl.where(causal & bad_j[None, :], 1, 0), axis=1)
        if DOT_F32:
            acc += tl.dot(mt, x_j.to(tl.float32), input_precision=F32_PRECISION)
        else:
            acc += tl.dot(mt.to(x_j.dtype), x_j)
    acc = tl.where(n_bad[:, None] > 0, float("nan"), acc)
    x_offs = b * s_x_b + ti[:, None] * s_x_l + h * P + offs_p[None, :]
    y_offs = b * s_y_b + ti[:, None] * s_y_l + h * P + offs_p[None, :]
    m_out = mi[:, None] & mp
    if HAS_D:
        x_i = tl.load(x_ptr + x_offs, mask=m_out, other=0.0).to(tl.float32)
        if D_PER_P:
            Dv = tl.load(D_ptr + h * P + offs_p, mask=offs_p < P, other=0.0).to(tl.float32)
            acc += x_i * Dv[None, :]
        else:
            acc += x_i * tl.load(D_ptr + h).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + y_offs, mask=m_out, other=0.0).to(tl.float32)
        sz = tl.sigmoid(zz)
        if GATE_BWD:
            do = tl.load(dout_ptr + y_offs, mask=m_out, other=0.0).to(tl.float32)
            tl.store(dz_ptr + y_offs, (do * acc * sz * (1.0 + zz * (1.0 - sz)))
                     .to(dz_ptr.dtype.element_ty), mask=m_out)
            acc = do * zz * sz
        else:
            acc = acc * zz * sz
    tl.store(out_ptr + y_offs, acc.to(out_ptr.dtype.element_ty), mask=m_out)


@triton.jit
def _ssd_bwd_dx_kernel(x_ptr, dy_ptr, w_ptr, cs_ptr, cslast_ptr, B_ptr, C_ptr, D_ptr, gend_ptr,
                       dx_ptr, dB_ptr, dw_ptr, term_ptr, dD_ptr, s_d_h, s_d_p,
                       L, H, P, N, Q, heads_per_group, n_chunks, G, n_splits,
                       s_x_b, s_x_l, s_y_b, s_y_l, s_b_b, s_b_l,
                       HAS_D: tl.constexpr, DOT_F32: tl.constexpr, F32_PRECISION: tl.constexpr, HEADS: tl.constexpr,
                       BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """Gradients reaching the inputs of step j, for a column block of chunk c and HEADS
    heads of one group: dx, dw and the state term's weight per head; dB summed over
    those heads (float32, one slice per head split); the block's part of dD per head.
    x and dx have the (b, l) strides s_x_*, dy the strides s_y_*; D (float32) is read
    as (H, P) at strides (s_d_h, s_d_p), s_d_p = 0 for a D per head."""
    pid = tl.program_id(0)
    c = tl.program_id(1)
    r = tl.program_id(2)
    b = (pid // (G * n_splits)).to(tl.int64)
    g = (pid // n_splits) % G
    split = pid % n_splits
    offs_m = tl.arange(0, BM)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    t0 = c * Q
    mp = offs_p[None, :] < P
    mn = offs_n[None, :] < N
    tj = t0 + r * BM + offs_m
    mj = (r * BM + offs_m < Q) & (tj < L)
    B_j = tl.load(B_ptr + b * s_b_b + tj[:, None] * s_b_l + g * N + offs_n[None, :],
                  mask=mj[:, None] & mn, other=0.0)
    dB_sum = tl.zeros([BM, BN], dtype=tl.float32)
    for k in range(0, HEADS):
        h = g * heads_per_group + split * HEADS + k
        row = (b * H + h) * n_chunks * Q
        w_j = tl.load(w_ptr + row + tj, mask=mj, other=0.0)
        cs_j = tl.load(cs_ptr + row + tj, mask=mj, other=0.0)
        cs_last = tl.load(cslast_ptr + (b * H + h) * n_chunks + c)
        xj_offs = b * s_x_b + tj[:, None] * s_x_l + h * P + offs_p[None, :]
        x_j = tl.load(x_ptr + xj_offs, mask=mj[:, None] & mp, other=0.0)
        # The chunk's own state term: its gradient arrives through the state leaving it.
        Gc = tl.load(gend_ptr + ((b * n_chunks + c) * H + h) * P * N + offs_p[:, None] * N
                     + offs_n[None, :], mask=(offs_p[:, None] < P) & mn, other=0.0)  # (BP, BN)
        if DOT_F32:
            BG = tl.dot(B_j.to(tl.float32), tl.trans(Gc), input_precision=F32_PRECISION)  # (BM, BP)
            XG = tl.dot(x_j.to(tl.float32), Gc, input_precision=F32_PRECISION)            # (BM, BN)
        else:
            BG = tl.dot(B_j, tl.trans(Gc.to(B_j.dtype)))
            XG = tl.dot(x_j, Gc.to(x_j.dtype))
        e_j = tl.where(mj, tl.exp(cs_last - cs_j), 0.0)
        ew = e_j * w_j
        dx_acc = BG * ew[:, None]
        dB_sum += XG * ew[:, None]
        dw = e_j * tl.sum(x_j.to(tl.float32) * BG, axis=1)
        tl.store(term_ptr + row + tj, w_j * dw, mask=mj)
        # Quadratic terms: every row block i >= j of the chunk.
        for s in range(r * BM, Q, BM):
            ti = t0 + s + offs_m
            mi = (s + offs_m < Q) & (ti < L)
            cs_i = tl.load(cs_ptr + row + ti, mask=mi, other=0.0)
            C_i = tl.load(C_ptr + b * s_b_b + ti[:, None] * s_b_l + g * N + offs_n[None, :],
                          mask=mi[:, None] & mn, other=0.0)
            dy_i = tl.load(dy_ptr + b * s_y_b + ti[:, None] * s_y_l + h * P + offs_p[None, :],
                           mask=mi[:, None] & mp, other=0.0)
            if DOT_F32:
                CB = tl.dot(B_j.to(tl.float32), tl.trans(C_i.to(tl.float32)),
                            input_precision=F32_PRECISION)
                XD = tl.dot(x_j.to(tl.float32), tl.trans(dy_i.to(tl.float32)),
                            input_precision=F32_PRECISION)
            else:
                CB = tl.dot(B_j, tl.trans(C_i))      # (BM_j, BM_i): C_i . B_j
                XD = tl.dot(x_j, tl.trans(dy_i))     # (BM_j, BM_i): dy_i . x_j
            causal = (ti[None, :] >= tj[:, None]) & mi[None, :] & mj[:, None]
            decay = tl.exp(tl.where(causal, cs_i[None, :] - cs_j[:, None], float("-inf")))
            CBd = CB * decay
            dw += tl.sum(CBd * XD, axis=1)
            if DOT_F32:
                dx_acc += tl.dot(CBd * w_j[:, None], dy_i.to(tl.float32), input_precision=F32_PRECISION)
                dB_sum += tl.dot(XD * decay * w_j[:, None], C_i.to(tl.float32),
                                 input_precision=F32_PRECISION)
            else:
                dx_acc += tl.dot((CBd * w_j[:, None]).to(dy_i.dtype), dy_i)
                dB_sum += tl.dot((XD * decay * w_j[:, None]).to(C_i.dtype), C_i)
        if HAS_D:
            dy_j = tl.load(dy_ptr + b * s_y_b + tj[:, None] * s_y_l + h * P + offs_p[None, :],
                           mask=mj[:, None] & mp, other=0.0).to(tl.float32)
            Dv = tl.load(D_ptr + h * s_d_h + offs_p * s_d_p, mask=offs_p < P, other=0.0)
            dx_acc += dy_j * Dv[None, :]
            tl.store(dD_ptr + (((b * n_chunks + c) * tl.num_programs(2) + r) * H + h) * P
                     + offs_p, tl.sum(dy_j * x_j.to(tl.float32), axis=0), mask=offs_p < P)
        tl.store(dx_ptr + xj_offs, dx_acc.to(dx_ptr.dtype.element_ty), mask=mj[:, None] & mp)
        tl.store(dw_ptr + row + tj, dw, mask=mj)
    tl.store(dB_ptr + (((b * L + tj[:, None]) * n_splits + split) * G + g) * N + offs_n[None, :],
             dB_sum, mask=mj[:, None] & mn)


@triton.jit
def _ssd_bwd_dc_kernel(x_ptr, dy_ptr, w_ptr, cs_ptr, B_ptr, C_ptr, sin_ptr, dC_ptr,
                       sterm_ptr, da_ptr,
                       L, H, P, N, Q, heads_per_group, n_chunks, G, n_splits,
                       s_x_b, s_x_l, s_y_b, s_y_l, s_b_b, s_b_l,
                       DOT_F32: tl.constexpr, F32_PRECISION: tl.constexpr, HEADS: tl.constexpr,
                       BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """dC for a row block i of chunk c summed over HEADS heads of one group (float32, one
    slice per head split). Per head also the log-decay gradients of the outputs of these
    rows: the state term exp(cs_i) dy_i . (C_i S^T) into sterm, and for every step k
    before or in the block, sum over pairs j < k <= i of M_ij = (dy_i . x_j)(C_i . B_j)
    exp(cs_i - cs_j) w_j (the pairs whose decay spans step k) into da[b, h, block]."""
    pid = tl.program_id(0)
    c = tl.program_id(1)
    r = tl.program_id(2)
    b = (pid // (G * n_splits)).to(tl.int64)
    g = (pid // n_splits) % G
    split = pid % n_splits
    offs_m = tl.arange(0, BM)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    t0 = c * Q
    mp = offs_p[None, :] < P
    mn = offs_n[None, :] < N
    ti = t0 + r * BM + offs_m
    mi = (r * BM + offs_m < Q) & (ti < L)
    C_i = tl.load(C_ptr + b * s_b_b + ti[:, None] * s_b_l + g * N + offs_n[None, :],
                  mask=mi[:, None] & mn, other=0.0)
    dC_sum = tl.zeros([BM, BN], dtype=tl.float32)
    for k in range(0, HEADS):
        h = g * heads_per_group + split * HEADS + k
        row = (b * H + h) * n_chunks * Q
        cs_i = tl.load(cs_ptr + row + ti, mask=mi, other=0.0)
        dy_i = tl.load(dy_ptr + b * s_y_b + ti[:, None] * s_y_l + h * P + offs_p[None, :],
                       mask=mi[:, None] & mp, other=0.0)
        S = tl.load(sin_ptr + ((b * n_chunks + c) * H + h) * P * N + offs_p[:, None] * N
                    + offs_n[None, :], mask=(offs_p[:, None] < P) & mn, other=0.0)  # (BP, BN)
        if DOT_F32:
            acc = tl.dot(dy_i.to(tl.float32), S, input_precision=F32_PRECISION)
        else:
            acc = tl.dot(dy_i, S.to(dy_i.dtype))
        acc = acc * tl.where(mi, tl.exp(cs_i), 0.0)[:, None]
        tl.store(sterm_ptr + row + ti, tl.sum(acc * C_i.to(tl.float32), axis=1), mask=mi)
        # Pair sums are formed directly (never as a difference of row and column sums,
        # which cancel their large diagonal terms and cost dA several digits).
        carry = tl.zeros([BM], dtype=tl.float32)   # sum of M_ij over earlier blocks j
        for s in range(0, (r + 1) * BM, BM):
            tj = t0 + s + offs_m
            mj = (s + offs_m < Q) & (tj < L)
            w_j = tl.load(w_ptr + row + tj, mask=mj, other=0.0)
            cs_j = tl.load(cs_ptr + row + tj, mask=mj, other=0.0)
            B_j = tl.load(B_ptr + b * s_b_b + tj[:, None] * s_b_l + g * N + offs_n[None, :],
                          mask=mj[:, None] & mn, other=0.0)
            x_j = tl.load(x_ptr + b * s_x_b + tj[:, None] * s_x_l + h * P + offs_p[None, :],
                          mask=mj[:, None] & mp, other=0.0)
            if DOT_F32:
                DX = tl.dot(dy_i.to(tl.float32), tl.trans(x_j.to(tl.float32)),
                            input_precision=F32_PRECISION)
                CB = tl.dot(C_i.to(tl.float32), tl.trans(B_j.to(tl.float32)),
                            input_precision=F32_PRECISION)
            else:
                DX = tl.dot(dy_i, tl.trans(x_j))     # (BM_i, BM_j): dy_i . x_j
                CB = tl.dot(C_i, tl.trans(B_j))      # (BM_i, BM_j): C_i . B_j
            causal = (ti[:, None] >= tj[None, :]) & mi[:, None] & mj[None, :]
            decay = tl.exp(tl.where(causal, cs_i[:, None] - cs_j[None, :], float("-inf")))
            mt = DX * decay * w_j[None, :]
            if DOT_F32:
                acc += tl.dot(mt, B_j.to(tl.float32), input_precision=F32_PRECISION)
            else:
                acc += tl.dot(mt.to(B_j.dtype), B_j)
            M = mt * CB
            span = tl.cumsum(M, axis=1) - M + carry[:, None]     # sum_{j' < k} M_ij', k = tj
            tl.store(da_ptr + ((b * H + h) * tl.num_programs(2) + r) * n_chunks * Q + tj,
                     tl.sum(tl.where(ti[:, None] >= tj[None, :], span, 0.0), axis=0), mask=mj)
            carry += tl.sum(M, axis=1)
        dC_sum += acc
    tl.store(dC_ptr + (((b * L + ti[:, None]) * n_splits + split) * G + g) * N + offs_n[None, :],
             dC_sum, mask=mi[:, None] & mn)


@triton.jit
def _ssd_bwd_dt_kernel(pairs_ptr, sterm_ptr, term_ptr, dcl_ptr, dw_ptr, w_ptr, A_ptr, dt_ptr,
                       bias_ptr, ddt_ptr, parts_ptr,
                       L, H, Q, n_chunks, n_rows, BM, n_blocks, lo, hi, s_dt_b, s_dt_l,
                       s_ddt_b, s_ddt_l,
                       HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr,
                       BQ: tl.constexpr, BLK: tl.constexpr):
    """Step 8 for chunk c of head h, batch b: the log-decays' gradient d a, then d w and
    the time-step transform's backward by hand. Reads (float32, written by the kernels
    before it; entries they did not write are masked, never read):
        pairs (b, H, n_rows, nc * Q)  row block r's pair sums, columns of blocks <= r;
        sterm, term, dw, w (b, H, nc * Q);  dcl (b, H, nc, n_blocks);  A (H,);
        dt (b, L, H) strided, bias (H,).
    Writes ddt (b, L, H) in dt's dtype, and parts[b * nc + c, :, h] (float64): this
    chunk's share of dA, then (with a bias) of d dt_bias."""
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs = tl.arange(0, BQ)
    t = c * Q + offs
    m = (offs < Q) & (t < L)
    row = (b * H + h) * n_chunks * Q + t
    # d a_k sums every term whose decay spans step k (module docstring, step 8). Float64:
    # the terms can cancel, and float32 sums of them cost dA digits (these are vectors).
    from_pairs = tl.zeros([BQ], dtype=tl.float64)
    for r in range(0, n_rows):   # row block r wrote the columns of blocks 0..r only
        from_pairs += tl.load(pairs_ptr + ((b * H + h) * n_rows + r) * n_chunks * Q + t,
                              mask=m & (offs // BM <= r), other=0.0).to(tl.float64)
    sterm = tl.load(sterm_ptr + row, mask=m, other=0.0).to(tl.float64)
    from_state_in = tl.cumsum(sterm, axis=0, reverse=True)           # rows i >= k
    term = tl.load(term_ptr + row, mask=m, other=0.0).to(tl.float64)
    from_own_state = tl.cumsum(term, axis=0) - term                  # steps j < k
    offs_k = tl.arange(0, BLK)
    dcl = tl.load(dcl_ptr + ((b * H + h) * n_chunks + c) * n_blocks + offs_k,
                  mask=offs_k < n_blocks, other=0.0).to(tl.float64)
    da = from_pairs + from_state_in + from_own_state + tl.sum(dcl)   # + the state passed on
    w = tl.load(w_ptr + row, mask=m, other=0.0).to(tl.float64)
    parts = parts_ptr + (b * n_chunks + c) * (1 + HAS_BIAS) * H + h
    tl.store(parts, tl.sum(tl.where(m, da * w, 0.0)))                # dA = sum d a w
    A = tl.load(A_ptr + h).to(tl.float64)
    g = (tl.load(dw_ptr + row, mask=m, other=0.0).to(tl.float64) + da * A).to(tl.float32)
    # The backward of process_dt (clamp(softplus(dt + bias), lo, hi)) as autograd runs it
    # in float32: the clamp passes the gradient where lo <= v <= hi (both ends inclusive),
    # softplus_backward is g e^x / (e^x + 1), or g where x > 20 (F.softplus's threshold).
    # v is recomputed with the forward kernel's softplus and hi (3e38 for no upper end),
    # so the mask is the one the forward's clamp applied.
    dt_offs = b * s_dt_b + t * s_dt_l + h
    if SOFTPLUS or CLAMP:
        x = tl.load(dt_ptr + dt_offs, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x = x + tl.load(bias_ptr + h).to(tl.float32)
        if CLAMP:
            v = x
            if SOFTPLUS:
                v = _softplus(x)
            g = tl.where((v >= lo) & (v <= hi), g, 0.0)
        if SOFTPLUS:
            e = tl.exp(tl.minimum(x, 20.0))
            g = tl.where(x > 20.0, g, g * e / (e + 1.0))
    # (The Triton interpreter truncates float32 -> bf16 here; the GPU rounds to nearest
    # even, as autograd's cast did.)
    tl.store(ddt_ptr + b * s_ddt_b + t * s_ddt_l + h, g.to(ddt_ptr.dtype.element_ty), mask=m)
    if HAS_BIAS:   # d dt_bias = sum of the gradient reaching dt + bias
        tl.store(parts + H, tl.sum(tl.where(m, g, 0.0).to(tl.float64)))


# Row block of the output and backward block kernels, and their warps per program: the
# configuration measured fastest (benchmarks/RESULTS.md); the result does not depend on
# them. (Offline, ptxas reports spills at this size: docs/kernels.md.) Exact float32
# matmuls ("ieee": FMA units, float32 operand tiles) take half the rows: at 64 rows and
# d_state 128 the Mamba-2 layer's float32 forward + backward ran 20x slower than at 32.
BLOCK_M = 64
BLOCK_M_F32 = 32
BLOCK_WARPS = 4
# tl.dot's input_precision for float32 operands on the GPU: "ieee" (exact: FMA units),
# "tf32x3" (three tensor-core tf32 products, about float32's accuracy, faster on an H100),
# or None: follow torch's setting, as torch's own float32 matmuls do ("highest", the
# default, takes "ieee"; "high" or "medium", from torch.set_float32_matmul_precision,
# take "tf32x3"). The CPU interpreter always takes "ieee".
F32_PRECISION = None


def _f32_precision(is_cuda: bool, block_m: int, warps: int) -> str:
    """The input_precision of the float32 matmuls for one launch. tf32x3 only at the tiling
    it passed the GPU tests at (32-row blocks, 4 warps): 64-row float32 blocks at 8 warps
    made an illegal memory access with it on an H100; elsewhere "ieee"."""
    wanted = F32_PRECISION
    if wanted is None:
        wanted = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32x3"
    if wanted not in ("ieee", "tf32x3"):
        raise ValueError(f"ssd_scan (Triton): F32_PRECISION must be 'ieee', 'tf32x3' or None, not {wanted!r}")
    if not is_cuda or (wanted == "tf32x3" and (block_m > 32 or warps != 4)):
        return "ieee"
    return wanted


def _p2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))   # tl.dot needs every dim >= 16


class _Launch:
    """Shapes, block sizes and kernel options shared by the forward and backward passes.
    Inputs in kernel layout (:func:`_kernel_layout`): x (b, L, h, p), dt (b, L, h), B, C
    (b, L, g, n) at their own (b, l) strides (``x_strides``, ``b_strides``); z, the output,
    dout and dy (b, L, h, p) contiguous (``y_strides``)."""

    def __init__(self, x, dt, A, B, C, chunk_size, dt_bias, dt_softplus, dt_limit):
        self.batch, self.L, self.H, self.P = x.shape
        self.G, self.N = B.shape[2], B.shape[3]
        self.Q = chunk_size
        self.nc = triton.cdiv(self.L, self.Q)
        self.BP, self.BN = _p2(self.P), _p2(self.N)
        self.clamp = tuple(dt_limit) != (0.0, math.inf)
        self.lo, self.hi = ((float(dt_limit[0]), float(min(dt_limit[1], 3.0e38)))
                            if self.clamp else (0.0, 0.0))
        # Half inputs feed the matmuls half operands on the GPU. The Triton interpreter
        # (CPU testing) computes half-precision tl.dot wrongly (seen with triton 3.9:
        # values ~1e9 off), so there the float32 path runs; the GPU tests cover it.
        self.dot_f32 = x.dtype in (torch.float32, torch.float64) or not x.is_cuda
        self.BM = min(BLOCK_M_F32 if self.dot_f32 else BLOCK_M, _p2(self.Q))
        self.f32_precision = _f32_precision(x.is_cuda, self.BM, BLOCK_WARPS)
        self.dims = (self.L, self.H, self.P, self.N, self.Q, self.H // self.G, self.nc)
        self.x_strides = (x.stride(0), x.stride(1))
        self.y_strides = (self.L * self.H * self.P, self.H * self.P)
        self.b_strides = (B.stride(0), B.stride(1))
        # The kernels form in-sequence offsets (step x row stride) in 32 bits (the batch
        # offset is 64-bit): refuse what would wrap rather than read the wrong rows.
        span = (self.nc * self.Q) * max(x.stride(1), dt.stride(1), B.stride(1), C.stride(1), self.H * self.P)
        if span >= 2 ** 31:
            raise ValueError(f"ssd_scan (Triton): a sequence of {self.L} steps at row strides up to "
                             f"{span // (self.nc * self.Q)} needs offsets past 2^31 elements; split the "
                             "sequence (initial_states carry the state across) or use backend='torch'")


def _time_steps(k: _Launch, dt, A, dt_bias, dt_softplus):
    """w, cs: (b, h, nc * Q) float32; cs_last (b, h, nc)."""
    dev = dt.device
    w = torch.empty(k.batch, k.H, k.nc * k.Q, device=dev, dtype=torch.float32)
    cs = torch.empty_like(w)
    cslast = torch.empty(k.batch, k.H, k.nc, device=dev, dtype=torch.float32)
    _ssd_dt_kernel[(k.batch * k.H, k.nc)](
        dt, A, dt_bias if dt_bias is not None else A, w, cs, cslast, k.L, k.H, k.Q, k.nc,
        k.lo, k.hi, dt.stride(0), dt.stride(1), HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), CLAMP=k.clamp, BQ=triton.next_power_of_2(k.Q), num_warps=4)
    return w, cs, cslast


def _chunk_states(k: _Launch, X, Y, w, cs, cslast, forward: bool):
    """(b, nc, h, p, n) float32: forward, each chunk's own state (X = x, Y = B);
    backward, the gradient its outputs send to the state entering it (X = dy, Y = C)."""
    out = torch.empty(k.batch, k.nc, k.H, k.P, k.N, device=X.device, dtype=torch.float32)
    _ssd_chunk_state_kernel[(k.batch * k.H, k.nc)](
        X, Y, w, cs, cslast, out, *k.dims, *(k.x_strides if forward else k.y_strides),
        *k.b_strides,
        FORWARD=forward, DOT_F32=k.dot_f32, F32_PRECISION=k.f32_precision, BQ=k.BM, BP=k.BP, BN=k.BN, num_warps=4)
    return out


PASS_BLOCK = 1024


def _pass_states(k: _Launch, states, cslast, h0):
    """States entering each chunk (b, nc, h, p, n) and the final state (b, h, p, n)."""
    sin = torch.empty_like(states)
    final = torch.empty(k.batch, k.H, k.P, k.N, device=states.device, dtype=torch.float32)
    _ssd_pass_kernel[(k.batch * k.H, triton.cdiv(k.P * k.N, PASS_BLOCK))](
        states, cslast, h0 if h0 is not None else states, sin, final, k.H, k.P * k.N, k.nc,
        HAS_H0=h0 is not None, BLOCK=PASS_BLOCK, num_warps=4)
    return sin, final


def _outputs(k: _Launch, x, w, cs, B, C, D, z, sin, dout=None):
    """y (b, L, h, p) in x's dtype, gated by silu(z) when z is given. With ``dout`` (and
    z): (dy, dz) instead, dy = dout * silu(z) and dz the gate's gradient. Outputs are
    contiguous, whatever x's strides."""
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    dz = torch.empty_like(z) if dout is not None else None
    _ssd_scan_kernel[(k.batch * k.H, k.nc, triton.cdiv(k.Q, k.BM))](
        x, w, cs, B, C, D if D is not None else w, z if z is not None else x, sin, out,
        dout if dout is not None else x, dz if dz is not None else x,
        *k.dims, *k.x_strides, *k.y_strides, *k.b_strides,
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        GATE_BWD=dout is not None, DOT_F32=k.dot_f32, F32_PRECISION=k.f32_precision, BM=k.BM, BP=k.BP, BN=k.BN,
        num_warps=BLOCK_WARPS)
    return (out, dz) if dout is not None else out


def _packed(x, B, C) -> bool:
    """Whether x (b, L, h, p), B and C (b, L, g, n) are adjacent column blocks x | B | C
    of one contiguous (b, L, h p + 2 g n) tensor (Mamba-2's conv output, split): then
    their gradients can be written into one such tensor (no concatenation after)."""
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    width = H * P + 2 * G * N
    rows = (L * width, width)
    return (x.dtype == B.dtype == C.dtype and x.device == B.device == C.device
            and x.untyped_storage().data_ptr() == B.untyped_storage().data_ptr()
            == C.untyped_storage().data_ptr()
            and x.stride() == (*rows, P, 1) and B.stride() == C.stride() == (*rows, N, 1)
            and B.storage_offset() == x.storage_offset() + H * P
            and C.storage_offset() == B.storage_offset() + G * N)


def _kernel_layout(x, dt, B, C, z, h0, allow_packed: bool):
    """The inputs in layouts the kernels take, copying only where needed, and whether x,
    B, C are packed (:func:`_packed`; only with ``allow_packed``). The kernels read rows
    of h p (x), g n (B, C) and h (dt) contiguous values at any (b, l) strides, B's and
    C's the same; dx is written with x's strides, so x is made contiguous unless packed;
    z and the initial states contiguous."""
    packed = allow_packed and _packed(x, B, C)
    if not packed:
        x = x.contiguous()
        if not (B.stride()[2:] == C.stride()[2:] == (B.shape[3], 1)
                and B.stride()[:2] == C.stride()[:2]):
            B, C = B.contiguous(), C.contiguous()
    dt = _inner_contiguous(dt)
    z, h0 = [t.contiguous() if t is not None else None for t in (z, h0)]
    return x, dt, B, C, z, h0, packed


def _forward_states(k: _Launch, x, dt, A, B, dt_bias, dt_softplus, h0):
    w, cs, cslast = _time_steps(k, dt, A, dt_bias, dt_softplus)
    sin, final = _pass_states(k, _chunk_states(k, x, B, w, cs, cslast, forward=True), cslast, h0)
    return w, cs, cslast, sin, final


# Heads per program of the dx/dB and dC kernels, at most: dB and dC are sums over the
# heads of a group, so a program takes several of them and writes one float32 partial
# sum per split of the group (fewer splits: less memory, fewer programs).
HEADS_PER_PROGRAM = 8


def _heads_per_program(heads_per_group: int) -> int:
    """The largest divisor of heads_per_group that is <= HEADS_PER_PROGRAM."""
    return max(d for d in range(1, min(HEADS_PER_PROGRAM, heads_per_group) + 1)
               if heads_per_group % d == 0)


def _backward(k: _Launch, saved, dt_softplus, dt_limit, dout, dfinal, packed=False):
    """Gradients of (x, dt, A, B, C, D, z, dt_bias, initial_states); see the module
    docstring, steps 4-8. dout (b, L, h, p); dfinal (b, h, p, n) or None. With
    ``packed`` (x, B, C column blocks of one tensor: :func:`_packed`) dx, dB and dC are
    the same column blocks of one new tensor."""
    x, dt, A, B, C, D, z, dt_bias, h0 = saved
    del dt_limit   # k has it (clamp, lo, hi), as the kernels take it
    w, cs, cslast, sin, _ = _forward_states(k, x, dt, A, B, dt_bias, dt_softplus, h0)
    dout = dout.contiguous()
    dz = None
    if z is not None:   # the gate's backward, fused into a recomputation of the outputs
        dy, dz = _outputs(k, x, w, cs, B, C, D, z, sin, dout=dout)
    else:
        dy = dout.to(x.dtype)
    U = _chunk_states(k, dy, C, w, cs, cslast, forward=False)
    gend = torch.empty_like(U)
    dh0 = torch.empty(k.batch, k.H, k.P, k.N, device=x.device, dtype=torch.float32)
    n_blocks = triton.cdiv(k.P * k.N, PASS_BLOCK)
    dcl = torch.empty(k.batch, k.H, k.nc, n_blocks, device=x.device, dtype=torch.float32)
    dfinal = dfinal.float().contiguous() if dfinal is not None else None
    _ssd_pass_bwd_kernel[(k.batch * k.H, n_blocks)](
        U, sin, cslast, dfinal if dfinal is not None else U, gend, dh0, dcl,
        k.H, k.P * k.N, k.nc, n_blocks, HAS_DFINAL=dfinal is not None, BLOCK=PASS_BLOCK,
        num_warps=4)
    del U

    hg = k.H // k.G
    heads = _heads_per_program(hg)
    splits = hg // heads
    n_rows = triton.cdiv(k.Q, k.BM)
    grid = (k.batch * k.G * splits, k.nc, n_rows)
    if packed:
        grad = torch.empty(k.batch, k.L, k.H * k.P + 2 * k.G * k.N, device=x.device,
                           dtype=x.dtype)
        dx, dB, dC = grad.split([k.H * k.P, k.G * k.N, k.G * k.N], dim=-1)
        dx, dB, dC = (dx.unflatten(-1, (k.H, k.P)), dB.unflatten(-1, (k.G, k.N)),
                      dC.unflatten(-1, (k.G, k.N)))
    else:
        dx = torch.empty_like(x)
    dB_parts = torch.empty(k.batch, k.L, splits, k.G, k.N, device=x.device, dtype=torch.float32)
    # Written by the dx and dC kernels at every step t < L (da_pairs: at the columns of
    # blocks <= its row block); the step-8 kernel reads nothing else: no zero fills.
    dw, term, sterm = torch.empty_like(w), torch.empty_like(w), torch.empty_like(w)
    da_pairs = torch.empty(k.batch, k.H, n_rows, k.nc * k.Q, device=x.device, dtype=torch.float32)
    D_hp, d_strides = None, (0, 0)
    if D is not None:   # (H, P) float32 for the kernel, whichever shape D has (a view)
        D_hp = (D.float()[:, None] if D.dim() == 1 else D.float()).expand(k.H, k.P)
        d_strides = D_hp.stride()
        dD_parts = torch.empty(k.batch, k.nc, n_rows, k.H, k.P, device=x.device,
                               dtype=torch.float32)
    common = dict(DOT_F32=k.dot_f32, F32_PRECISION=k.f32_precision, HEADS=heads, BM=k.BM, BP=k.BP, BN=k.BN,
                  num_warps=BLOCK_WARPS)
    _ssd_bwd_dx_kernel[grid](
        x, dy, w, cs, cslast, B, C, D_hp if D is not None else w, gend,
        dx, dB_parts, dw, term, dD_parts if D is not None else w, *d_strides,
        *k.dims, k.G, splits, *k.x_strides, *k.y_strides, *k.b_strides, HAS_D=D is not None,
        **common)
    del gend
    dC_parts = torch.empty_like(dB_parts)
    _ssd_bwd_dc_kernel[grid](
        x, dy, w, cs, B, C, sin, dC_parts, sterm, da_pairs,
        *k.dims, k.G, splits, *k.x_strides, *k.y_strides, *k.b_strides, **common)
    dB_sum = dB_parts.sum(2) if splits > 1 else dB_parts[:, :, 0]
    dC_sum = dC_parts.sum(2) if splits > 1 else dC_parts[:, :, 0]
    if packed:   # the cast writes straight into the blocks of grad
        dB.copy_(dB_sum)
        dC.copy_(dC_sum)
    else:
        dB, dC = dB_sum.to(B.dtype), dC_sum.to(C.dtype)
    dD = None
    if D is not None:
        dD = dD_parts.sum((0, 1, 2) if D.dim() == 2 else (0, 1, 2, 4)).to(D.dtype)

    # Step 8, one kernel per (b, h, chunk): d a, d w += d a A, ddt through the time-step
    # transform; dA and d dt_bias as float64 partial sums per chunk, reduced here.
    n_out = 2 if dt_bias is not None else 1
    ddt = torch.empty(dt.shape, device=dt.device, dtype=dt.dtype)   # contiguous
    parts = torch.empty(k.batch * k.nc, n_out, k.H, device=x.device, dtype=torch.float64)
    _ssd_bwd_dt_kernel[(k.batch * k.H, k.nc)](
        da_pairs, sterm, term, dcl, dw, w, A, dt, dt_bias if dt_bias is not None else A,
        ddt, parts, k.L, k.H, k.Q, k.nc, n_rows, k.BM, n_blocks, k.lo, k.hi,
        dt.stride(0), dt.stride(1), ddt.stride(0), ddt.stride(1), HAS_BIAS=dt_bias is not None,
        SOFTPLUS=bool(dt_softplus), CLAMP=k.clamp, BQ=triton.next_power_of_2(k.Q),
        BLK=triton.next_power_of_2(n_blocks), num_warps=4)
    sums = parts.sum(0)                                            # (n_out, H) float64
    if dt_bias is None or dt_bias.dtype == A.dtype:
        sums = sums.to(A.dtype)                                    # one cast for both
    dA = sums[0].to(A.dtype)
    ddt_bias = sums[1].to(dt_bias.dtype) if dt_bias is not None else None
    dh0 = dh0.to(h0.dtype) if h0 is not None else None
    return dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dh0


def ssd_scan_fwd(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size, dt_softplus,
                 dt_limit, return_final_states):
    """The forward kernels: (y, final states or None). Nothing is kept for the backward,
    which recomputes the chunk states from the inputs (:func:`ssd_scan_bwd`)."""
    x, dt, B, C, z, h0, _ = _kernel_layout(x, dt, B, C, z, initial_states, False)
    k = _Launch(x, dt, A, B, C, chunk_size, dt_bias, dt_softplus, dt_limit)
    w, cs, _, sin, final = _forward_states(k, x, dt, A, B, dt_bias, dt_softplus, h0)
    return _outputs(k, x, w, cs, B, C, D, z, sin), final if return_final_states else None


def ssd_scan_bwd(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size, dt_softplus,
                 dt_limit, dout, dfinal):
    """Gradients of (x, dt, A, B, C, D, z, dt_bias, initial_states) (None for an absent
    input); dout (b, L, h, p), dfinal (b, h, p, n) or None. (Never packed: the gradients
    of this torch.library op must not alias each other.)"""
    x, dt, B, C, z, h0, _ = _kernel_layout(x, dt, B, C, z, initial_states, False)
    k = _Launch(x, dt, A, B, C, chunk_size, dt_bias, dt_softplus, dt_limit)
    return _backward(k, (x, dt, A, B, C, D, z, dt_bias, h0), dt_softplus, dt_limit, dout, dfinal)


class _SSDFn(torch.autograd.Function):
    """Eager autograd around the kernels; the backward reuses the forward's launch
    configuration and inputs in kernel layout. Packed x, B, C (:func:`_packed`) get their
    gradients as the same blocks of one tensor, which Mamba-2's split takes without a
    copy (:func:`mimetic.modules._packed.split_views`)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size, dt_softplus,
                dt_limit, return_final_states):
        x, dt, B, C, z, h0, packed = _kernel_layout(x, dt, B, C, z, initial_states, True)
        k = _Launch(x, dt, A, B, C, chunk_size, dt_bias, dt_softplus, dt_limit)
        w, cs, _, sin, final = _forward_states(k, x, dt, A, B, dt_bias, dt_softplus, h0)
        out = _outputs(k, x, w, cs, B, C, D, z, sin)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, h0)
        ctx.launch, ctx.packed = k, packed
        ctx.opts = (dt_softplus, dt_limit)
        return (out, final) if return_final_states else out

    @staticmethod
    def backward(ctx, dout, dfinal=None):
        grads = _backward(ctx.launch, ctx.saved_tensors, *ctx.opts, dout, dfinal, ctx.packed)
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad)]
        return (*grads, None, None, None, None)


def ssd_scan_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """Same contract as :func:`~mimetic.ops.ssd.reference.ssd_scan_ref` (float64 inputs take
    the chunked PyTorch path: the kernels compute in float32)."""
    if x.dtype == torch.float64:
        # The kernels compute in float32; keep float64 inputs at float64 accuracy.
        return ssd_scan_torch(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z,
                              dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit,
                              initial_states=initial_states,
                              return_final_states=return_final_states)
    return _SSDFn.apply(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size,
                        dt_softplus, tuple(dt_limit), return_final_states)
