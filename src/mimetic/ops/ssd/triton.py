"""Mamba-2 SSD chunked scan: Triton forward, backward through the PyTorch chunked path.

Per batch b, head h (group g), chunk c of Q = chunk_size steps, with dt' the processed
time step (bias, softplus, clamp) and a_t = dt'_t A[h] <= 0, cs_t its in-chunk cumsum:

1. chunk states (``_ssd_state_kernel``, one program per (b, h, c)):
       s_c = sum_t exp(cs_last - cs_t) dt'_t x_t B_t^T                  (P, N), a matmul
   and the chunk's total log-decay cs_last;
2. state passing (``_ssd_pass_kernel``): S_{c+1} = exp(cs_last_c) S_c + s_c from the
   initial state, sequential over chunks, parallel over (b, h, P*N); the last one is the
   final state;
3. outputs (``_ssd_scan_kernel``, one program per (b, h, c, row block)):
       y_i = exp(cs_i) C_i S_c^T + sum_{j <= i} (C_i . B_j) exp(cs_i - cs_j) dt'_j x_j
             + D x_i,   out = y * silu(z)
   with the quadratic part as blocked matmuls (C B^T masked and decayed, times x).
Every exponent is <= 0 (A < 0, i >= j), so nothing overflows. Matmuls take bf16/fp16
operands for half inputs (float32 accumulation) and exact float32 ("ieee") for float32.

Backward: not a Triton kernel yet. The autograd function recomputes the forward with the
differentiable PyTorch chunked implementation (``torch.py``) and backpropagates through
it, so gradients are those of that (tested) path; only the forward is fast.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

__all__ = ["ssd_scan_triton"]


@triton.jit
def _proc_dt(dt_ptr, offs, m, bias, lo, hi, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
             CLAMP: tl.constexpr):
    """Processed time step (float32), 0 where masked (so masked steps are identities)."""
    dt = tl.load(dt_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt = dt + bias
    if SOFTPLUS:
        e = tl.exp(-tl.abs(dt))
        dt = tl.maximum(dt, 0.0) + tl.where(e < 1e-3, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
    if CLAMP:
        dt = tl.minimum(tl.maximum(dt, lo), hi)
    return tl.where(m, dt, 0.0)


@triton.jit
def _ssd_state_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, states_ptr, cslast_ptr,
                      L, H, P, N, Q, heads_per_group, n_chunks, lo, hi,
                      s_x_b, s_x_l, s_dt_b, s_dt_l, s_b_b, s_b_l,
                      HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr,
                      DOT_F32: tl.constexpr,
                      BQ: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    g = h // heads_per_group
    A_h = tl.load(A_ptr + h).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h).to(tl.float32)
    offs_q = tl.arange(0, BQ)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    t0 = c * Q
    # Total log-decay of the chunk first: each step's weight is its decay to the end.
    cs_last = 0.0
    for s in range(0, Q, BQ):
        t = t0 + s + offs_q
        m = (s + offs_q < Q) & (t < L)
        dtp = _proc_dt(dt_ptr + b * s_dt_b + h, t * s_dt_l, m, bias, lo, hi,
                       HAS_BIAS, SOFTPLUS, CLAMP)
        cs_last += tl.sum(dtp * A_h)
    acc = tl.zeros([BP, BN], dtype=tl.float32)
    prefix = 0.0
    for s in range(0, Q, BQ):
        t = t0 + s + offs_q
        m = (s + offs_q < Q) & (t < L)
        dtp = _proc_dt(dt_ptr + b * s_dt_b + h, t * s_dt_l, m, bias, lo, hi,
                       HAS_BIAS, SOFTPLUS, CLAMP)
        a = dtp * A_h
        cs = prefix + tl.cumsum(a, axis=0)
        prefix += tl.sum(a)
        w = tl.exp(cs_last - cs) * dtp                                   # (BQ,)
        xb = tl.load(x_ptr + b * s_x_b + t[:, None] * s_x_l + h * P + offs_p[None, :],
                     mask=m[:, None] & (offs_p[None, :] < P), other=0.0)
        Bb = tl.load(B_ptr + b * s_b_b + t[:, None] * s_b_l + g * N + offs_n[None, :],
                     mask=m[:, None] & (offs_n[None, :] < N), other=0.0)
        xw = xb.to(tl.float32) * w[:, None]
        if DOT_F32:
            acc += tl.dot(tl.trans(xw), Bb.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(tl.trans(xw.to(Bb.dtype)), Bb)
    base = ((b * n_chunks + c) * H + h) * P * N
    tl.store(states_ptr + base + offs_p[:, None] * N + offs_n[None, :], acc,
             mask=(offs_p[:, None] < P) & (offs_n[None, :] < N))
    tl.store(cslast_ptr + (b * H + h) * n_chunks + c, cs_last)


@triton.jit
def _ssd_pass_kernel(states_ptr, cslast_ptr, h0_ptr, sin_ptr, final_ptr, H, PN, n_chunks,
                     HAS_H0: tl.constexpr, BLOCK: tl.constexpr):
    """S_in[c] = state entering chunk c; in place of the chunk states (b, c, H, P*N)."""
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
def _ssd_scan_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, sin_ptr, out_ptr,
                     L, H, P, N, Q, heads_per_group, n_chunks, lo, hi,
                     s_x_b, s_x_l, s_dt_b, s_dt_l, s_b_b, s_b_l,
                     HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr,
                     HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr,
                     DOT_F32: tl.constexpr,
                     BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    r = tl.program_id(2)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    g = h // heads_per_group
    A_h = tl.load(A_ptr + h).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + h).to(tl.float32)
    offs_m = tl.arange(0, BM)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    t0 = c * Q
    mp = offs_p[None, :] < P
    mn = offs_n[None, :] < N
    dt_row = dt_ptr + b * s_dt_b + h
    # In-chunk cumulative log-decay at the start of this row block.
    prefix_i = 0.0
    for s in range(0, r * BM, BM):
        t = t0 + s + offs_m
        m = (s + offs_m < Q) & (t < L)
        prefix_i += tl.sum(_proc_dt(dt_row, t * s_dt_l, m, bias, lo, hi,
                                    HAS_BIAS, SOFTPLUS, CLAMP) * A_h)
    ti = t0 + r * BM + offs_m
    mi = (r * BM + offs_m < Q) & (ti < L)
    cs_i = prefix_i + tl.cumsum(_proc_dt(dt_row, ti * s_dt_l, mi, bias, lo, hi,
                                         HAS_BIAS, SOFTPLUS, CLAMP) * A_h, axis=0)
    C_i = tl.load(C_ptr + b * s_b_b + ti[:, None] * s_b_l + g * N + offs_n[None, :],
                  mask=mi[:, None] & mn, other=0.0)
    # Contribution of the state entering the chunk.
    S = tl.load(sin_ptr + ((b * n_chunks + c) * H + h) * P * N + offs_p[:, None] * N
                + offs_n[None, :], mask=(offs_p[:, None] < P) & mn, other=0.0)   # (BP, BN)
    if DOT_F32:
        acc = tl.dot(C_i.to(tl.float32), tl.trans(S), input_precision="ieee")
    else:
        acc = tl.dot(C_i, tl.trans(S.to(C_i.dtype)))
    acc = acc * tl.exp(cs_i)[:, None]
    # Quadratic part over the column blocks j <= i of this chunk.
    prefix_j = 0.0
    for s in range(0, (r + 1) * BM, BM):
        tj = t0 + s + offs_m
        mj = (s + offs_m < Q) & (tj < L)
        dt_j = _proc_dt(dt_row, tj * s_dt_l, mj, bias, lo, hi, HAS_BIAS, SOFTPLUS, CLAMP)
        a_j = dt_j * A_h
        cs_j = prefix_j + tl.cumsum(a_j, axis=0)
        prefix_j += tl.sum(a_j)
        B_j = tl.load(B_ptr + b * s_b_b + tj[:, None] * s_b_l + g * N + offs_n[None, :],
                      mask=mj[:, None] & mn, other=0.0)
        x_j = tl.load(x_ptr + b * s_x_b + tj[:, None] * s_x_l + h * P + offs_p[None, :],
                      mask=mj[:, None] & mp, other=0.0)
        if DOT_F32:
            cb = tl.dot(C_i.to(tl.float32), tl.trans(B_j.to(tl.float32)), input_precision="ieee")
        else:
            cb = tl.dot(C_i, tl.trans(B_j))
        causal = ti[:, None] >= tj[None, :]
        decay = tl.exp(tl.where(causal, cs_i[:, None] - cs_j[None, :], float("-inf")))
        mt = cb * decay * dt_j[None, :]
        if DOT_F32:
            acc += tl.dot(mt, x_j.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(mt.to(x_j.dtype), x_j)
    x_offs = b * s_x_b + ti[:, None] * s_x_l + h * P + offs_p[None, :]
    m_out = mi[:, None] & mp
    if HAS_D:
        x_i = tl.load(x_ptr + x_offs, mask=m_out, other=0.0).to(tl.float32)
        if D_PER_P:
            Dv = tl.load(D_ptr + h * P + offs_p, mask=offs_p < P, other=0.0).to(tl.float32)
            acc += x_i * Dv[None, :]
        else:
            acc += x_i * tl.load(D_ptr + h).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + x_offs, mask=m_out, other=0.0).to(tl.float32)
        acc = acc * zz * tl.sigmoid(zz)
    tl.store(out_ptr + x_offs, acc.to(out_ptr.dtype.element_ty), mask=m_out)


def _p2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))   # tl.dot needs every dim >= 16


def _forward(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus, dt_limit, initial_states):
    x, dt, B, C = x.contiguous(), dt.contiguous(), B.contiguous(), C.contiguous()
    z = z.contiguous() if z is not None else None
    batch, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    Q = chunk_size
    nc = triton.cdiv(L, Q)
    dev = x.device
    BP, BN = _p2(P), _p2(N)
    BM = min(64, _p2(Q))
    clamp = tuple(dt_limit) != (0.0, math.inf)
    lo, hi = (float(dt_limit[0]), float(min(dt_limit[1], 3.0e38))) if clamp else (0.0, 0.0)
    # Half inputs feed the matmuls half operands on the GPU. The Triton interpreter
    # (CPU testing) computes half-precision tl.dot wrongly (seen with triton 3.9: values
    # ~1e9 off), so there the float32 path runs; the GPU tests cover the half path.
    dot_f32 = x.dtype in (torch.float32, torch.float64) or not x.is_cuda
    states = torch.empty(batch, nc, H, P, N, device=dev, dtype=torch.float32)
    cslast = torch.empty(batch, H, nc, device=dev, dtype=torch.float32)
    common = dict(HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), CLAMP=clamp,
                  DOT_F32=dot_f32)
    strides = (x.stride(0), x.stride(1), dt.stride(0), dt.stride(1), B.stride(0), B.stride(1))
    bias = dt_bias if dt_bias is not None else A
    _ssd_state_kernel[(batch * H, nc)](
        x, dt, A, B, bias, states, cslast, L, H, P, N, Q, H // G, nc, lo, hi, *strides,
        BQ=BM, BP=BP, BN=BN, num_warps=4, **common)
    sin = torch.empty_like(states)
    final = torch.empty(batch, H, P, N, device=dev, dtype=torch.float32)
    h0 = initial_states.contiguous() if initial_states is not None else None
    block = 1024
    _ssd_pass_kernel[(batch * H, triton.cdiv(P * N, block))](
        states, cslast, h0 if h0 is not None else states, sin, final, H, P * N, nc,
        HAS_H0=h0 is not None, BLOCK=block, num_warps=4)
    out = torch.empty_like(x)
    _ssd_scan_kernel[(batch * H, nc, triton.cdiv(Q, BM))](
        x, dt, A, B, C, D if D is not None else A, z if z is not None else x, bias, sin, out,
        L, H, P, N, Q, H // G, nc, lo, hi, *strides,
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        BM=BM, BP=BP, BN=BN, num_warps=4, **common)
    return out, final


class _SSDFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size, dt_softplus,
                dt_limit, return_final_states):
        out, final = _forward(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus,
                              dt_limit, initial_states)
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states)
        ctx.opts = (chunk_size, dt_softplus, dt_limit, return_final_states)
        return (out, final) if return_final_states else out

    @staticmethod
    def backward(ctx, *grads):
        from .torch import ssd_scan_torch

        saved = ctx.saved_tensors
        chunk_size, dt_softplus, dt_limit, return_final_states = ctx.opts
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(needs) if t is not None else None
                      for t, needs in zip(saved, ctx.needs_input_grad[:9])]
            x, dt, A, B, C, D, z, dt_bias, h0 = leaves
            res = ssd_scan_torch(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z,
                                 dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit,
                                 initial_states=h0, return_final_states=return_final_states)
            outs = res if return_final_states else (res,)
            pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
            wrt = [t for t in leaves if t is not None and t.requires_grad]
            got = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                      allow_unused=True)
        it = iter(got)
        result = [next(it) if (t is not None and t.requires_grad) else None for t in leaves]
        return (*result, None, None, None, None)


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
    """Same contract as :func:`ssd_scan_ref`: x, z (batch, L, H, P); dt (batch, L, H);
    A, dt_bias (H,); B, C (batch, L, G, N); D (H,) or (H, P); initial_states
    (batch, H, P, N). Returns y (batch, L, H, P) in x's dtype and, with
    ``return_final_states``, the final states (batch, H, P, N) in float32."""
    if x.dtype == torch.float64:
        # The kernels compute in float32; keep float64 inputs at float64 accuracy.
        from .torch import ssd_scan_torch

        return ssd_scan_torch(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z,
                              dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit,
                              initial_states=initial_states,
                              return_final_states=return_final_states)
    return _SSDFn.apply(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size,
                        dt_softplus, tuple(dt_limit), return_final_states)
