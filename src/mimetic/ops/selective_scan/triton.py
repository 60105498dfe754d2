"""Mamba-1 selective scan as Triton kernels (forward and backward).

Math (see ``reference.py``), per batch b, channel d, state n, step t:

    delta_t = softplus(delta_raw_t + bias[d])                  (both optional)
    a_t     = exp(delta_t * A[d, n]),   b_t = delta_t * u_t * B_t[n]
    h_t     = a_t * h_{t-1} + b_t
    y_t     = sum_n C_t[n] * h_t + D[d] * u_t,   out_t = y_t * silu(z_t)

Everything (softplus, discretization, scan, D skip, z gate) is fused; u, delta, z, out
are read/written once as tiles contiguous in time. Four kernel layouts exist; the
default ("lane", ``FORWARD_VARIANT``) was the fastest measured on an H100:

* lane (default): a (channels, steps) tile with time spread over the lanes of a warp and
  several consecutive steps per thread; states handled one n at a time, each scanned
  along time with ``tl.associative_scan`` (sequential inside a thread, then across
  lanes). Forward and backward (``_ss_fwd_lane_kernel`` / ``_ss_bwd_lane_kernel``).
* seq: one channel per thread, state (n) in registers, one step at a time; forward only.
* tile: a (channels, n, steps) tile scanned along steps; forward and backward.
* segment: one thread per (channel, time segment), state in registers, steps one at a
  time; segments run from zero (pass 1), their carries are composed (pass 2), then re-run
  with the true carry (pass 3). Forward only (the lane backward follows it); analysed
  offline, not yet timed (benchmarks/gpu_notes.md).

Backward (``torch.autograd.Function``). The forward stores only the state entering each
chunk (float32) when a gradient is needed -- never per-step states. The backward walks
chunks in reverse: it recomputes the chunk's states from its stored entry state with the
same forward scan, then runs the adjoint recurrence

    dh_t = C_t * dy_t + a_{t+1} * dh_{t+1}

as a reverse associative scan, carrying dh across chunks in registers. With
a_t h_{t-1} = h_t - b_t (no division, no stored h_{t-1}) the gradients are

    du_t     = delta_t * sum_n dh_t B_t + D dy_t
    ddelta_t = sum_n dh_t (B_t u_t + A (h_t - b_t))       (times sigmoid for softplus)
    dA       = sum_t dh_t delta_t (h_t - b_t)
    dB_t     = sum_d dh_t delta_t u_t,     dC_t = sum_d dy_t h_t
    dh_init  = a_0 dh_0

dB and dC sum over the channels of a group, which several programs share: each program
reduces its own channels; the lane backward stores per-program partials (summed after),
the tile backward adds into float32 buffers with relaxed atomics. dA, dD and d(bias)
sum over batch: each program writes its own row, summed afterwards in PyTorch.

Performance (H100, see benchmarks/RESULTS.md): correct, but slower than mamba_ssm's
CUDA kernel; the lane kernels are limited by warp shuffles / shared memory (MIO) of the
cross-lane scans and reductions, not by memory bandwidth.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

__all__ = ["selective_scan_triton"]

_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------- helpers

@triton.jit
def _affine_fwd(a1, b1, a2, b2):
    # Compose x -> a1 x + b1 (earlier step) then x -> a2 x + b2 (later step).
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _softplus(x):
    # log(1 + e^x) without overflow and without losing small values to 1 + e^-|x| == 1:
    # for tiny e, log(1 + e) ~ e - e^2/2 (next term e^3/3 is below fp32 resolution).
    e = tl.exp(-tl.abs(x))
    log1p_e = tl.where(e < 1e-3, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
    return tl.maximum(x, 0.0) + log1p_e


@triton.jit
def _load_delta(delta_ptr, offs, mask, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Returns (delta after bias/softplus, pre-softplus value), both float32, 0 where masked."""
    raw = tl.load(delta_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw = raw + bias[:, None]
    dt = raw
    if SOFTPLUS:
        dt = _softplus(raw)
    # Masked (padding) steps must be exact identities of the recurrence: delta 0 gives
    # a = 1 and b = 0 whatever A, B, u are.
    dt = tl.where(mask, dt, 0.0)
    return dt, raw


# ----------------------------------------------------------------------------- forward

@triton.jit
def _ss_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, hlast_ptr, ckpt_ptr,
    dim, L, N, dim_per_group, n_chunks,
    s_x_b, s_x_d,            # u, delta, z, out share one (b, d, L) contiguous layout
    s_bc_b, s_bc_g, s_bc_n,  # B and C: (b, g, n, L) contiguous
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, STORE_LAST: tl.constexpr,
    STORE_CKPT: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_tl = tl.arange(0, BLOCK_T)
    mask_d = offs_d < dim
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    # All channels of a block share one group (the wrapper makes BLOCK_D divide dim/groups).
    group = (pid_d * BLOCK_D) // dim_per_group

    # exp(delta*A) is evaluated as exp2(delta * A*log2(e)): one hardware ex2 per element.
    A2 = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0)
    A2 = A2.to(tl.float32) * 1.4426950408889634
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)

    state_offs = offs_d[:, None] * N + offs_n[None, :]          # (BLOCK_D, BLOCK_N) in (d, n)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * dim * N + state_offs, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)

    x_base = pid_b * s_x_b + offs_d[:, None].to(tl.int64) * s_x_d                 # (BLOCK_D, 1)
    bc_base = pid_b * s_bc_b + group * s_bc_g + offs_n[:, None] * s_bc_n  # (BLOCK_N, 1)
    for c in range(0, n_chunks):
        offs_t = c * BLOCK_T + offs_tl
        mask_t = offs_t < L
        m_dt = mask_d[:, None] & mask_t[None, :]
        m_nt = mask_n[:, None] & mask_t[None, :]
        if STORE_CKPT:
            tl.store(ckpt_ptr + (pid_b * n_chunks + c) * dim * N + state_offs, h, mask=mask_dn)
        x_offs = x_base + offs_t[None, :]
        dt, _ = _load_delta(delta_ptr, x_offs, m_dt, bias, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + x_offs, mask=m_dt, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + bc_base + offs_t[None, :], mask=m_nt, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_base + offs_t[None, :], mask=m_nt, other=0.0).to(tl.float32)

        a = tl.exp2(dt[:, None, :] * A2[:, :, None])                 # (BD, BN, BT)
        b = (dt * u)[:, None, :] * Bt[None, :, :]
        acum, bcum = tl.associative_scan((a, b), axis=2, combine_fn=_affine_fwd)
        hs = acum * h[:, :, None] + bcum
        y = tl.sum(hs * Ct[None, :, :], axis=1)                       # (BD, BT)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_ptr + x_offs, mask=m_dt, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + x_offs, y.to(out_ptr.dtype.element_ty), mask=m_dt)
        # Padding steps are identities, so the last column is the state after step L-1.
        h = tl.sum(tl.where(offs_tl[None, None, :] == BLOCK_T - 1, hs, 0.0), axis=2)
    if STORE_LAST:
        tl.store(hlast_ptr + pid_b * dim * N + state_offs, h, mask=mask_dn)


# ------------------------------------------------------------- forward, per-step variant

@triton.jit
def _unpack8(x, BLOCK_D: tl.constexpr):
    """(BLOCK_D, 8) -> its 8 columns (BLOCK_D,), by splitting in registers (no memory)."""
    x = tl.reshape(x, (BLOCK_D, 2, 2, 2))           # column t = 4i + 2j + k -> [i, j, k]
    k0, k1 = tl.split(x)
    k0j0, k0j1 = tl.split(k0)
    k1j0, k1j1 = tl.split(k1)
    x0, x4 = tl.split(k0j0)
    x2, x6 = tl.split(k0j1)
    x1, x5 = tl.split(k1j0)
    x3, x7 = tl.split(k1j1)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _pack8(x0, x1, x2, x3, x4, x5, x6, x7, BLOCK_D: tl.constexpr):
    """Inverse of _unpack8: 8 columns (BLOCK_D,) -> (BLOCK_D, 8)."""
    k0 = tl.join(tl.join(x0, x4), tl.join(x2, x6))   # [d, i, j] for k = 0
    k1 = tl.join(tl.join(x1, x5), tl.join(x3, x7))
    return tl.reshape(tl.join(k0, k1), (BLOCK_D, 8))


@triton.jit
def _seq_step(h, A2, u, dt, bc_ptr, t, N, offs_n, zero_d, L, s_n):
    """One recurrence step on the (BLOCK_N, BLOCK_D) state, n along registers and d along
    threads: the sum over n for y stays inside each thread. B_t, C_t come from the
    time-major copies (b, g, L, n); C sits N*L elements after B."""
    # B and C are interleaved, (.., t, n, {B, C}): the n offsets have stride 2, so Triton
    # does not see them as contiguous and keeps n in registers (were they contiguous it
    # would spread n across threads to vectorize this load, and the whole per-step state
    # would follow, turning the sum over n into shuffles); being compile-time constants
    # they also fold into the load instructions. No mask: the copy is float32, zero-padded
    # in n (to BLOCK_N) and in time (to a multiple of 8), so every address exists.
    n_offs = offs_n[:, None] * 2 + zero_d[None, :]
    Bt = tl.load(bc_ptr + t * (2 * N) + n_offs)
    Ct = tl.load(bc_ptr + t * (2 * N) + 1 + n_offs)
    a = tl.exp2(dt[None, :] * A2)
    h = a * h + (dt * u)[None, :] * Bt
    y = tl.sum(h * Ct, axis=0)
    return h, y


@triton.jit(do_not_specialize=["s_bc_n"])
def _ss_fwd_seq_kernel(
    u_ptr, delta_ptr, A_ptr, BC_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, hlast_ptr, ckpt_ptr,
    dim, L, N, dim_per_group, n_ckpt, BC_L,
    s_x_b, s_x_d, s_bc_b, s_bc_g, s_bc_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, STORE_LAST: tl.constexpr,
    STORE_CKPT: tl.constexpr, CKPT_T: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Forward with the state of one channel per thread and steps taken one at a time.

    BC_ptr holds B and C time-major in float32, interleaved: (b, g, L8, BLOCK_N, 2) with
    L8 = L rounded up to 8, zero-padded, so that a step's B_t, C_t are one small block.
    Time advances in sub-chunks of 8 steps: u, delta, z are loaded and out stored as
    (BLOCK_D, 8) tiles (8 consecutive steps of a channel per thread, one vector access),
    and split into per-step columns in registers.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_8 = tl.arange(0, 8)
    zero_d = tl.zeros([BLOCK_D], dtype=tl.int32)
    mask_d = offs_d < dim
    mask_nd = (offs_n[:, None] < N) & mask_d[None, :]
    group = (pid_d * BLOCK_D) // dim_per_group

    # (BLOCK_N, BLOCK_D) offsets into (d, n) states; n scaled by the run-time s_bc_n (== 1)
    # for the layout reason given in _seq_step.
    state_offs = offs_d[None, :] * N + offs_n[:, None] * s_bc_n
    A2 = tl.load(A_ptr + state_offs, mask=mask_nd, other=0.0).to(tl.float32) * 1.4426950408889634
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * dim * N + state_offs, mask=mask_nd, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    x_base = pid_b * s_x_b + offs_d[:, None].to(tl.int64) * s_x_d
    bc = BC_ptr + pid_b * s_bc_b + group * s_bc_g
    for c in range(0, tl.cdiv(L, 8)):
        t0 = c * 8
        if STORE_CKPT:
            if t0 % CKPT_T == 0:
                tl.store(ckpt_ptr + (pid_b * n_ckpt + t0 // CKPT_T) * dim * N + state_offs, h,
                         mask=mask_nd)
        offs_t = t0 + offs_8
        m_dt = mask_d[:, None] & (offs_t[None, :] < L)
        x_offs = x_base + offs_t[None, :]
        dt, _ = _load_delta(delta_ptr, x_offs, m_dt, bias, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + x_offs, mask=m_dt, other=0.0).to(tl.float32)
        u0, u1, u2, u3, u4, u5, u6, u7 = _unpack8(u, BLOCK_D)
        d0, d1, d2, d3, d4, d5, d6, d7 = _unpack8(dt, BLOCK_D)
        h, y0 = _seq_step(h, A2, u0, d0, bc, t0 + 0, BLOCK_N, offs_n, zero_d, BC_L, s_bc_n)
        h, y1 = _seq_step(h, A2, u1, d1, bc, t0 + 1, BLOCK_N, offs_n, zero_d, BC_L, s_bc_n)
        h, y2 = _seq_step(h, A2, u2, d2, bc, t0 + 2, BLOCK_N, offs_n, zero_d, BC_L, s_bc_n)
        h, y3 = _seq_step(h, A2, u3, d3, bc, t0 + 3, BLOCK_N, offs_n, zero_d, BC_L, s_bc_n)
        h, y4 = _seq_step(h, A2, u4, d4, bc, t0 + 4, BLOCK_N, offs_n, zero_d, BC_L, s_bc_n)
        h, y5 = _seq_step(h, A2, u5, d5, bc, t0 + 5, BLOCK_N, offs_n, zero_d, BC_L, s_bc_n)
        h, y6 = _seq_step(h, A2, u6, d6, bc, t0 + 6, BLOCK_N, offs_n, zero_d, BC_L, s_bc_n)
        h, y7 = _seq_step(h, A2, u7, d7, bc, t0 + 7, BLOCK_N, offs_n, zero_d, BC_L, s_bc_n)
        y = _pack8(y0, y1, y2, y3, y4, y5, y6, y7, BLOCK_D)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_ptr + x_offs, mask=m_dt, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + x_offs, y.to(out_ptr.dtype.element_ty), mask=m_dt)
    if STORE_LAST:
        tl.store(hlast_ptr + pid_b * dim * N + state_offs, h, mask=mask_nd)


# ------------------------------------------------------------- forward, time-across-lanes

@triton.jit
def _ss_fwd_lane_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, ckpt_ptr,
    dim, L, N, dim_per_group, n_chunks,
    s_x_b, s_x_d, s_bc_b, s_bc_g, s_bc_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, STORE_CKPT: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Forward with time spread over the lanes of a warp, one channel per warp.

    A (BLOCK_D, BLOCK_T) tile holds BLOCK_T consecutive steps of each channel, several
    consecutive steps per thread (one vector load). The states are handled one n at a
    time (a loop over n): for each n the affine maps of the tile are scanned along time --
    sequentially inside each thread, then across lanes -- so the cross-lane part is paid
    once per thread, not once per step, and only 2-D tiles live in registers.

    The state carried between chunks lives in a tile ``hc`` of the same shape and layout
    as the data (column j holds state n = j; needs BLOCK_T >= N), so reading and writing
    one state n are register selects plus one in-warp reduction: no memory round trip,
    no layout conversion, no barrier inside the loop over n.

    ``ckpt`` (b, n_chunks + 1, dim, N) float32: slot 0 holds the initial state (filled by
    the caller); with STORE_CKPT slot c + 1 receives the state after chunk c -- the
    chunk-entry states the backward needs, the last slot being the final state.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_tl = tl.arange(0, BLOCK_T)
    zero_d = tl.zeros([BLOCK_D], dtype=tl.int32)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_tl[None, :] < N)
    group = (pid_d * BLOCK_D) // dim_per_group

    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    slot = ckpt_ptr + (pid_b * (n_chunks + 1) * dim + offs_d[:, None]) * N + offs_tl[None, :]
    hc = tl.load(slot, mask=mask_dn, other=0.0)

    x_base = pid_b * s_x_b + offs_d[:, None].to(tl.int64) * s_x_d
    bc_base = pid_b * s_bc_b + group * s_bc_g
    for c in range(0, n_chunks):
        offs_t = c * BLOCK_T + offs_tl
        mask_t = offs_t < L
        m_dt = mask_d[:, None] & mask_t[None, :]
        # B/C rows are loaded through a (BLOCK_D, BLOCK_T) pointer tile (the same row for
        # every channel) so they arrive in the layout of u/delta with no shuffling.
        m_bc = (zero_d[:, None] == 0) & mask_t[None, :]
        x_offs = x_base + offs_t[None, :]
        dt, _ = _load_delta(delta_ptr, x_offs, m_dt, bias, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + x_offs, mask=m_dt, other=0.0).to(tl.float32)
        dtu = dt * u
        y = Dv[:, None] * u
        hc_next = hc
        for n in range(0, N):
            a2 = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32)
            bc_offs = bc_base + n * s_bc_n + offs_t[None, :] + zero_d[:, None]
            Bn = tl.load(B_ptr + bc_offs, mask=m_bc, other=0.0).to(tl.float32)
            Cn = tl.load(C_ptr + bc_offs, mask=m_bc, other=0.0).to(tl.float32)
            a = tl.exp2(dt * (a2 * 1.4426950408889634)[:, None])
            acum, bcum = tl.associative_scan((a, dtu * Bn), axis=1, combine_fn=_affine_fwd)
            col = offs_tl[None, :] == n
            h_in = tl.sum(tl.where(col, hc, 0.0), axis=1)
            hs = acum * h_in[:, None] + bcum
            y += hs * Cn
            # Padding steps are identities, so the last column is the state after step L-1.
            h_last = tl.sum(tl.where(offs_tl[None, :] == BLOCK_T - 1, hs, 0.0), axis=1)
            hc_next = tl.where(col, h_last[:, None], hc_next)
        hc = hc_next
        if HAS_Z:
            zz = tl.load(z_ptr + x_offs, mask=m_dt, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + x_offs, y.to(out_ptr.dtype.element_ty), mask=m_dt)
        if STORE_CKPT:
            tl.store(slot + (c + 1) * dim * N, hc, mask=mask_dn)


@triton.jit
def _ss_bwd_lane_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr,
    dout_ptr, dh_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, L, N, dim_per_group, n_chunks,
    s_x_b, s_x_d, s_bc_b, s_bc_g, s_bc_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Backward in the layout of :func:`_ss_fwd_lane_kernel`, chunks in reverse order.

    Per chunk and state n: recompute the chunk's states from the stored entry state
    (forward scan), run the adjoint dh_t = C_t dy_t + a_{t+1} dh_{t+1} as a reverse scan
    from the carried dh, and accumulate the gradients (see the module docstring). The dh
    carry and the dA sums live in registers as (BLOCK_D, BLOCK_T) tiles, column j for
    state j (like ``hc`` in the forward). ``dh_ptr`` (b, dim, N) float32 holds
    d(last state) on entry and receives dh at step 0. dB and dC sum over the channels
    of a group: reduced over the program's channels (one joint reduction) and stored
    per program into ``dB_ptr``/``dC_ptr`` (b, programs, N, L), summed by the caller.
    """
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_tl = tl.arange(0, BLOCK_T)
    zero_d = tl.zeros([BLOCK_D], dtype=tl.int32)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_tl[None, :] < N)
    group = (pid_d * BLOCK_D) // dim_per_group

    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    state_tile = (pid_b * dim + offs_d[:, None]) * N + offs_tl[None, :]
    dhc = tl.load(dh_ptr + state_tile, mask=mask_dn, other=0.0)
    dAc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    # dB/dC partials: (b, programs along dim, N, L) float32.
    part_base = (pid_b * tl.num_programs(1) + pid_d) * N * L

    x_base = pid_b * s_x_b + offs_d[:, None].to(tl.int64) * s_x_d
    bc_base = pid_b * s_bc_b + group * s_bc_g
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        offs_t = c * BLOCK_T + offs_tl
        mask_t = offs_t < L
        m_dt = mask_d[:, None] & mask_t[None, :]
        m_bc = (zero_d[:, None] == 0) & mask_t[None, :]
        x_offs = x_base + offs_t[None, :]
        dt, raw = _load_delta(delta_ptr, x_offs, m_dt, bias, HAS_BIAS, SOFTPLUS)
        # delta_{t+1}: its decay carries dh_{t+1} back to t; 0 past the end (decay 1) so
        # that d(last state) reaches step L-1 unchanged.
        m_next = mask_d[:, None] & (offs_t[None, :] + 1 < L)
        dt_next, _ = _load_delta(delta_ptr, x_offs + 1, m_next, bias, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + x_offs, mask=m_dt, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + x_offs, mask=m_dt, other=0.0).to(tl.float32)
        dtu = dt * u
        if HAS_Z:
            zz = tl.load(z_ptr + x_offs, mask=m_dt, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            dy = dout * zz * sz
        else:
            dy = dout
        y = Dv[:, None] * u
        du_acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        ddt_acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        st_in = ckpt_ptr + ((pid_b * (n_chunks + 1) + c) * dim + offs_d) * N
        dhc_next = dhc
        for n in range(0, N):
            A_n = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32)
            A2_n = (A_n * 1.4426950408889634)[:, None]
            h_in = tl.load(st_in + n, mask=mask_d, other=0.0)
            bc_offs = bc_base + n * s_bc_n + offs_t[None, :] + zero_d[:, None]
            Bn = tl.load(B_ptr + bc_offs, mask=m_bc, other=0.0).to(tl.float32)
            Cn = tl.load(C_ptr + bc_offs, mask=m_bc, other=0.0).to(tl.float32)
            # States of this chunk, from its entry state.
            b = dtu * Bn
            acum, bcum = tl.associative_scan((tl.exp2(dt * A2_n), b), axis=1,
                                             combine_fn=_affine_fwd)
            hs = acum * h_in[:, None] + bcum
            y += hs * Cn
            # Adjoint, right to left, from the dh carried in column n of dhc.
            col = offs_tl[None, :] == n
            pcum, gcum = tl.associative_scan((tl.exp2(dt_next * A2_n), Cn * dy), axis=1,
                                             combine_fn=_affine_fwd, reverse=True)
            dh_in = tl.sum(tl.where(col, dhc, 0.0), axis=1)
            dh = pcum * dh_in[:, None] + gcum
            dh_first = tl.sum(tl.where(offs_tl[None, :] == 0, dh, 0.0), axis=1)
            dhc_next = tl.where(col, dh_first[:, None], dhc_next)

            hb = hs - b                                   # a_t h_{t-1}
            dhB = dh * Bn
            du_acc += dhB
            ddt_acc += dhB * u + dh * hb * A_n[:, None]
            dAc += tl.where(col, tl.sum(dh * hb * dt, axis=1)[:, None], 0.0)
            # dB and dC: one joint reduction over the program's channels, stored as this
            # program's partial sum (summed over programs afterwards). Plain stores: fp32
            # atomics from every program saturated the L2 atomic units (measured 11 ms).
            dBC = tl.sum(tl.join(dh * dtu, hs * dy), axis=0)          # (BLOCK_T, 2)
            dBt, dCt = tl.split(dBC)
            part_t = part_base + n * L + offs_t
            tl.store(dB_ptr + part_t, dBt, mask=mask_t)
            tl.store(dC_ptr + part_t, dCt, mask=mask_t)
        dhc = dhc_next
        du = dt * du_acc + Dv[:, None] * dy
        ddt = tl.where(m_dt, ddt_acc, 0.0)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        dbias_acc += tl.sum(ddt, axis=1)
        dD_acc += tl.sum(dy * u, axis=1)
        tl.store(du_ptr + x_offs, du.to(du_ptr.dtype.element_ty), mask=m_dt)
        tl.store(ddelta_ptr + x_offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=m_dt)
        if HAS_Z:
            dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + x_offs, dz.to(dz_ptr.dtype.element_ty), mask=m_dt)
    tl.store(dh_ptr + state_tile, dhc, mask=mask_dn)
    tl.store(dA_ptr + state_tile, dAc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc, mask=mask_d)


# ------------------------------------------------------------- forward, segmented in time

@triton.jit
def _cols2(x, S: tl.constexpr, K: tl.constexpr):
    """(S, K) -> tuple of its K columns (S,), in order, split in registers (K a power of
    two <= 16; in the tiles used here the K values of a row sit in one thread)."""
    if K == 1:
        r = (tl.reshape(x, (S,)),)
    elif K == 2:
        r = tl.split(x)
    else:
        ev, od = tl.split(tl.reshape(x, (S, K // 2, 2)))
        e = _cols2(ev, S, K // 2)
        o = _cols2(od, S, K // 2)
        if K == 4:
            r = (e[0], o[0], e[1], o[1])
        elif K == 8:
            r = (e[0], o[0], e[1], o[1], e[2], o[2], e[3], o[3])
        else:
            r = (e[0], o[0], e[1], o[1], e[2], o[2], e[3], o[3],
                 e[4], o[4], e[5], o[5], e[6], o[6], e[7], o[7])
    return r


@triton.jit
def _pack(c, S: tl.constexpr, K: tl.constexpr):
    """Inverse of _cols2: tuple of K columns (S,) -> (S, K)."""
    if K == 1:
        r = tl.reshape(c[0], (S, 1))
    elif K == 2:
        r = tl.join(c[0], c[1])
    elif K == 4:
        r = tl.reshape(tl.join(_pack((c[0], c[2]), S, 2), _pack((c[1], c[3]), S, 2)), (S, 4))
    elif K == 8:
        r = tl.reshape(tl.join(_pack((c[0], c[2], c[4], c[6]), S, 4),
                               _pack((c[1], c[3], c[5], c[7]), S, 4)), (S, 8))
    else:
        r = tl.reshape(tl.join(_pack((c[0], c[2], c[4], c[6], c[8], c[10], c[12], c[14]), S, 8),
                               _pack((c[1], c[3], c[5], c[7], c[9], c[11], c[13], c[15]), S, 8)),
                       (S, 16))
    return r


@triton.jit
def _softplus_fast(x, FAST: tl.constexpr):
    """softplus with one ex2 and one lg2 (MUFU) per element on the GPU (FAST): log(1 + e)
    as lg2(1 + e) ln2 for e = exp(-|x|) >= 1/16 (lg2.approx: ~1e-7 absolute, < 3e-6
    relative here), else a 5-term series (truncation e^5/6, < 3e-6 relative). The
    interpreter has no lg2.approx (FAST off): tl.log there, same formula otherwise."""
    e = tl.exp2(tl.abs(x) * -1.4426950408889634)
    one_e = 1.0 + e
    if FAST:
        lg = libdevice.fast_log2f(one_e) * 0.6931471805599453
    else:
        lg = tl.log(one_e)
    series = e * (1.0 - e * (0.5 - e * (0.3333333333333333 - e * (0.25 - e * 0.2))))
    return tl.maximum(x, 0.0) + tl.where(e < 0.0625, series, lg)


@triton.jit
def _exp2_fma(x):
    """2^x without the MUFU unit (which two exps per state update saturate): round x to
    an integer j with the 1.5 * 2^23 trick, 2^(x - j) by a degree-5 polynomial on
    [-1/2, 1/2] (relative error < 3e-7, as ex2.approx), j added into the exponent bits.
    12 FMA-pipe/ALU instructions. x is clamped to [-125, 127] (2^-125 stands for 0)."""
    x = tl.minimum(tl.maximum(x, -125.0), 127.0)
    t = x + 12582912.0
    f = x - (t - 12582912.0)
    p = 0.0013400432653725147 * f + 0.009676037356257439
    p = p * f + 0.05550327152013779
    p = p * f + 0.2402210682630539
    p = p * f + 0.6931471824645996
    p = p * f + 1.0000001192092896
    e = t.to(tl.int32, bitcast=True) << 23
    return (p.to(tl.int32, bitcast=True) + e).to(tl.float32, bitcast=True)


@triton.jit
def _ss_seg_bc_kernel(B_ptr, C_ptr, BC_ptr, L, Lp,
                      NS: tl.constexpr, KB: tl.constexpr, BLOCK: tl.constexpr):
    """B, C (b*g, NS, L) -> one float32 buffer (b*g, Lp/KB, NS, 2, KB), zero-padded in
    time: the KB-step block of B and C for every n is one small contiguous piece, so the
    forward reads it with constant offsets from one pointer (KB-wide vector loads)."""
    bg = tl.program_id(1).to(tl.int64)
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    blk = o // (2 * NS * KB)
    r = o % (2 * NS * KB)
    n = r // (2 * KB)
    which = (r // KB) % 2
    t = blk * KB + r % KB
    inside = o < Lp * 2 * NS
    m = inside & (t < L)
    src = bg * NS * L + n * L + t
    b = tl.load(B_ptr + src, mask=m & (which == 0), other=0.0).to(tl.float32)
    c = tl.load(C_ptr + src, mask=m & (which == 1), other=0.0).to(tl.float32)
    tl.store(BC_ptr + bg * Lp * 2 * NS + o, b + c, mask=inside)


@triton.jit
def _ss_fwd_seg_kernel(
    u_ptr, delta_ptr, A_ptr, BC_ptr, D_ptr, z_ptr, bias_ptr, carry_ptr, dsum_ptr, out_ptr,
    dim, L, G, dim_per_group, n_seg, Lp,
    s_x_b, s_x_d,
    PASS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
    NS: tl.constexpr, BLOCK_C: tl.constexpr, SEG_T: tl.constexpr, KX: tl.constexpr,
    KB: tl.constexpr, POLY: tl.constexpr,
):
    """Segmented forward: one thread per (channel, time segment of SEG_T steps), the
    channel's NS (= d_state) states in that thread's registers, steps one at a time.

    PASS 1 runs each segment from a zero state and stores its end state into carry slot
    seg + 1 and the segment's sum of delta into ``dsum``; ``_ss_seg_carry_kernel`` then
    composes the slots into the true state entering each segment (a segment maps h to
    exp(A sum(delta)) h + its end state); PASS 3 re-runs each segment from its entry
    state and writes the outputs. ``carry`` is (b, n_seg + 1, dim, NS) float32: slot s
    the state entering segment s, slot n_seg the final state -- with SEG_T equal to the
    lane backward's chunk it is exactly the checkpoint tensor that backward reads.

    Everything is a (BLOCK_C,) vector, one channel per thread, and the state is a tuple
    of NS such vectors (one per n): no reductions, no shuffles, no layout conversions;
    the sum over n for y is a chain of FMAs. A step's data reach the thread as follows:
    u, delta, z are loaded as (BLOCK_C, KX) tiles (KX consecutive steps of a channel per
    thread, one 16-byte vector) and split into per-step columns in registers; B and C
    come from the ``_ss_seg_bc_kernel`` buffer, one KB-step vector per n at constant
    offsets from one pointer, the same address for all channels of a group (broadcast).
    The last POLY states of each step take their exp on the FMA pipe (``_exp2_fma``), to
    balance the MUFU unit against instruction issue.
    """
    pid_c = tl.program_id(0)
    seg = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < dim
    bias = tl.zeros([BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_C], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    slots = carry_ptr + pid_b * (n_seg + 1) * dim * NS + offs_c * NS
    slot_in = slots + seg.to(tl.int64) * dim * NS
    A2 = ()
    h = ()
    for n in tl.static_range(NS):
        A2 = A2 + (tl.load(A_ptr + offs_c * NS + n, mask=mask_c, other=0.0).to(tl.float32)
                   * 1.4426950408889634,)
        if PASS == 3:
            h = h + (tl.load(slot_in + n, mask=mask_c, other=0.0),)
        else:
            h = h + (tl.zeros([BLOCK_C], dtype=tl.float32),)
    dsum = tl.zeros([BLOCK_C], dtype=tl.float32)

    x_base = pid_b * s_x_b + offs_c[:, None].to(tl.int64) * s_x_d        # (BLOCK_C, 1)
    bc_row = (pid_b * G + offs_c // dim_per_group) * (Lp * 2 * NS)       # (BLOCK_C,) int64
    bc_offs = bc_row[:, None] + tl.arange(0, KB)[None, :]                # (BLOCK_C, KB)
    offs_k = tl.arange(0, KX)
    t_start = seg * SEG_T
    n_blk = tl.cdiv(tl.minimum(L - t_start, SEG_T), KX)
    for j in range(0, n_blk):
        t0 = t_start + j * KX
        offs_t = t0 + offs_k
        m = mask_c[:, None] & (offs_t[None, :] < L)
        x_offs = x_base + offs_t[None, :]
        # Padding steps get delta 0: a = 1, b = 0, the identity.
        raw = tl.load(delta_ptr + x_offs, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw = raw + bias[:, None]
        dt = raw
        if SOFTPLUS:
            dt = _softplus_fast(raw, FAST)
        dt = tl.where(m, dt, 0.0)
        u = tl.load(u_ptr + x_offs, mask=m, other=0.0).to(tl.float32)
        dts = _cols2(dt, BLOCK_C, KX)
        dtus = _cols2(dt * u, BLOCK_C, KX)
        if PASS == 1:
            for k in tl.static_range(KX):
                dsum += dts[k]
        ys = ()
        for i in tl.static_range(KX // KB):
            bc = BC_ptr + bc_offs + (t0 + i * KB).to(tl.int64) * (2 * NS)
            Bs = ()
            Cs = ()
            for n in tl.static_range(NS):
                Bs = Bs + (_cols2(tl.load(bc + n * (2 * KB)), BLOCK_C, KB),)
                if PASS == 3:
                    Cs = Cs + (_cols2(tl.load(bc + n * (2 * KB) + KB), BLOCK_C, KB),)
            for k in tl.static_range(KB):
                dt_k = dts[i * KB + k]
                dtu_k = dtus[i * KB + k]
                y = tl.zeros([BLOCK_C], dtype=tl.float32)
                h_new = ()
                for n in tl.static_range(NS):
                    if n >= NS - POLY:
                        a = _exp2_fma(dt_k * A2[n])
                    else:
                        a = tl.exp2(dt_k * A2[n])
                    hn = a * h[n] + dtu_k * Bs[n][k]
                    h_new = h_new + (hn,)
                    if PASS == 3:
                        y += hn * Cs[n][k]
                h = h_new
                ys = ys + (y,)
        if PASS == 3:
            y = _pack(ys, BLOCK_C, KX)
            if HAS_D:
                y += Dv[:, None] * u
            if HAS_Z:
                zz = tl.load(z_ptr + x_offs, mask=m, other=0.0).to(tl.float32)
                y = y * zz / (1.0 + tl.exp2(zz * -1.4426950408889634))
            tl.store(out_ptr + x_offs, y.to(out_ptr.dtype.element_ty), mask=m)
    if PASS == 1:
        slot_out = slots + (seg + 1).to(tl.int64) * dim * NS
        for n in tl.static_range(NS):
            tl.store(slot_out + n, h[n], mask=mask_c)
        tl.store(dsum_ptr + (pid_b * n_seg + seg) * dim + offs_c, dsum, mask=mask_c)


@triton.jit
def _ss_seg_carry_kernel(A_ptr, h0_ptr, carry_ptr, dsum_ptr, dim, N, n_seg, n_use,
                         HAS_H0: tl.constexpr, BLOCK_E: tl.constexpr, SCH: tl.constexpr):
    """Pass 2 of the segmented forward: per (b, d, n), fold the segments in order,
    h_{s+1} = exp(A sum(delta)_s) h_s + end_s, in place over carry slots 1..n_use; slot 0
    receives the initial state. SCH segments at a time: their loads are issued together
    and composed by an in-thread scan (segments along registers)."""
    pid_b = tl.program_id(1).to(tl.int64)
    offs_e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)      # over (d, n)
    m_e = offs_e < dim * N
    A2 = tl.load(A_ptr + offs_e, mask=m_e, other=0.0).to(tl.float32) * 1.4426950408889634
    ch = offs_e // N
    base = carry_ptr + pid_b * (n_seg + 1) * dim * N
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * dim * N + offs_e, mask=m_e, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_E], dtype=tl.float32)
    tl.store(base + offs_e, h, mask=m_e)
    offs_s = tl.arange(0, SCH)
    for s0 in range(0, n_use, SCH):
        s = s0 + offs_s
        m = (s[:, None] < n_use) & m_e[None, :]
        ds = tl.load(dsum_ptr + (pid_b * n_seg + s[:, None]) * dim + ch[None, :], mask=m, other=0.0)
        slot = base + (s[:, None] + 1).to(tl.int64) * dim * N + offs_e[None, :]
        e = tl.load(slot, mask=m, other=0.0)
        acum, bcum = tl.associative_scan((tl.exp2(ds * A2[None, :]), e), axis=0,
                                         combine_fn=_affine_fwd)
        hs = acum * h[None, :] + bcum
        tl.store(slot, hs, mask=m)
        # Masked rows are identities (a = 1, end 0): the last row is the running state.
        h = tl.sum(tl.where(offs_s[:, None] == SCH - 1, hs, 0.0), axis=0)


# ----------------------------------------------------------------------------- backward

@triton.jit
def _ss_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr,
    dout_ptr, dhlast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    dim, L, N, dim_per_group, n_chunks,
    s_x_b, s_x_d, s_bc_b, s_bc_g, s_bc_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_DHLAST: tl.constexpr, STORE_DH0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_tl = tl.arange(0, BLOCK_T)
    mask_d = offs_d < dim
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    group = (pid_d * BLOCK_D) // dim_per_group

    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)

    state_offs = offs_d[:, None] * N + offs_n[None, :]
    if HAS_DHLAST:
        dh_carry = tl.load(dhlast_ptr + pid_b * dim * N + state_offs, mask=mask_dn, other=0.0)
        dh_carry = dh_carry.to(tl.float32)
    else:
        dh_carry = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)

    x_base = pid_b * s_x_b + offs_d[:, None].to(tl.int64) * s_x_d
    bc_base = pid_b * s_bc_b + group * s_bc_g + offs_n[:, None] * s_bc_n
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        offs_t = c * BLOCK_T + offs_tl
        mask_t = offs_t < L
        m_dt = mask_d[:, None] & mask_t[None, :]
        m_nt = mask_n[:, None] & mask_t[None, :]
        x_offs = x_base + offs_t[None, :]
        dt, raw = _load_delta(delta_ptr, x_offs, m_dt, bias, HAS_BIAS, SOFTPLUS)
        # a_{t+1}: the decay that carries dh_{t+1} back to step t. Past the end it is 1 so
        # that the incoming d(last state) reaches step L-1 unchanged.
        m_next = mask_d[:, None] & (offs_t[None, :] + 1 < L)
        dt_next, _ = _load_delta(delta_ptr, x_offs + 1, m_next, bias, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + x_offs, mask=m_dt, other=0.0).to(tl.float32)
        Bt = tl.load(B_ptr + bc_base + offs_t[None, :], mask=m_nt, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + bc_base + offs_t[None, :], mask=m_nt, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + x_offs, mask=m_dt, other=0.0).to(tl.float32)
        h_in = tl.load(ckpt_ptr + (pid_b * n_chunks + c) * dim * N + state_offs, mask=mask_dn,
                       other=0.0)

        # Recompute this chunk's states from its stored entry state.
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])
        b = (dt * u)[:, None, :] * Bt[None, :, :]
        acum, bcum = tl.associative_scan((a, b), axis=2, combine_fn=_affine_fwd)
        hs = acum * h_in[:, :, None] + bcum

        if HAS_Z:
            zz = tl.load(z_ptr + x_offs, mask=m_dt, other=0.0).to(tl.float32)
            y = tl.sum(hs * Ct[None, :, :], axis=1) + Dv[:, None] * u
            sz = tl.sigmoid(zz)
            dy = dout * zz * sz
            dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + x_offs, dz.to(dz_ptr.dtype.element_ty), mask=m_dt)
        else:
            dy = dout

        # Reverse scan: dh_t = g_t + a_{t+1} dh_{t+1}, i.e. the affine maps applied from the
        # right; composing them in reverse order is the forward combine on flipped time.
        g = Ct[None, :, :] * dy[:, None, :]
        a_next = tl.exp2(dt_next[:, None, :] * A2[:, :, None])
        pcum, gcum = tl.associative_scan((a_next, g), axis=2, combine_fn=_affine_fwd,
                                         reverse=True)
        dh = pcum * dh_carry[:, :, None] + gcum
        dh_carry = tl.sum(tl.where(offs_tl[None, None, :] == 0, dh, 0.0), axis=2)

        hb = hs - b                                   # a_t h_{t-1}
        dhB = dh * Bt[None, :, :]
        du = dt * tl.sum(dhB, axis=1) + Dv[:, None] * dy
        ddt = tl.sum(dhB * u[:, None, :] + dh * A[:, :, None] * hb, axis=1)
        ddt = tl.where(m_dt, ddt, 0.0)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(raw)
        dbias_acc += tl.sum(ddt, axis=1)
        dA_acc += tl.sum(dh * hb * dt[:, None, :], axis=2)
        dD_acc += tl.sum(dy * u, axis=1)
        tl.store(du_ptr + x_offs, du.to(du_ptr.dtype.element_ty), mask=m_dt)
        tl.store(ddelta_ptr + x_offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=m_dt)

        dBt = tl.sum(dh * (dt * u)[:, None, :], axis=0)          # (BN, BT)
        dCt = tl.sum(hs * dy[:, None, :], axis=0)
        tl.atomic_add(dB_ptr + bc_base + offs_t[None, :], dBt, mask=m_nt, sem="relaxed")
        tl.atomic_add(dC_ptr + bc_base + offs_t[None, :], dCt, mask=m_nt, sem="relaxed")

    part = pid_b * dim + offs_d
    tl.store(dA_ptr + pid_b * dim * N + state_offs, dA_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + part, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + part, dbias_acc, mask=mask_d)
    if STORE_DH0:
        # d h_init = a_0 * dh_0.
        m0 = mask_d[:, None] & (offs_tl[None, :] == 0) & (offs_tl[None, :] < L)
        dt0, _ = _load_delta(delta_ptr, x_base + offs_tl[None, :], m0, bias, HAS_BIAS, SOFTPLUS)
        dt0 = tl.sum(dt0, axis=1)
        a0 = tl.exp2(dt0[:, None] * A2)
        tl.store(dh0_ptr + pid_b * dim * N + state_offs, a0 * dh_carry, mask=mask_dn)


# ----------------------------------------------------------------------------- launch

def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _config(dim_per_group: int, n: int, backward: bool):
    """Block sizes: BLOCK_D must divide the channels of a group (one group per program);
    the (BLOCK_D, BLOCK_N, BLOCK_T) tile is kept near 4096 (forward) or 2048 (backward)
    elements so that the several live tiles of a step fit in registers."""
    block_n = max(_next_pow2(n), 2)
    block_t = 32 if block_n <= 32 else 16
    budget = (2048 if backward else 4096) // (block_n * block_t)
    block_d = 1
    while block_d * 2 <= max(budget, 1) and dim_per_group % (block_d * 2) == 0 and block_d < 64:
        block_d *= 2
    num_warps = 4 if block_d * block_n * block_t >= 4096 else 2 if block_d * block_n * block_t >= 1024 else 1
    return block_d, block_n, block_t, num_warps


# Forward kernel choice: "seq" (per-step, state in registers, one channel per thread)
# where it applies, else "tile" (chunk-parallel associative scan). Benchmarks flip it.
FORWARD_VARIANT = "lane"
# Lane-kernel configurations (channels per program, warps per program, steps per tile),
# chosen from the H100 measurements in benchmarks/gpu_notes.md: without gradients the
# forward is fastest with (4, 4, 256); with gradients the backward dominates and is
# fastest with (16, 4, 64), and the forward must then use the same tile length (the
# stored chunk-entry states are per tile). Setting LANE_D / LANE_WARPS / LANE_T
# overrides both (benchmarks do).
LANE_INFER = (4, 4, 256)
LANE_TRAIN = (16, 4, 64)
# Few channels (batch * dim <= 2048, i.e. long sequences at small batch): with 16
# channels per program too few programs run; (8, 4, 128) measured 38.8 ms vs 47.0 ms
# (bf16) and 41.3 vs 50.2 ms (fp32) fwd+bwd at 1x1536x65536.
LANE_TRAIN_FEW = (8, 4, 128)
LANE_D = None
LANE_WARPS = None
LANE_T = None


def _lane_config(dim_per_group: int, n: int, need_grad: bool, channels: int):
    """(channels per program, warps, steps per tile) for the lane kernels. Channels: a
    power of two dividing dim/groups (a program stays inside one group). Steps: at least
    d_state (the carried states are held one per column of a tile). ``channels`` is
    batch * dim, the number of independent scans."""
    if need_grad:
        d, w, t = LANE_TRAIN if channels > 2048 else LANE_TRAIN_FEW
    else:
        d, w, t = LANE_INFER
    d = LANE_D if LANE_D is not None else d
    w = LANE_WARPS if LANE_WARPS is not None else w
    t = LANE_T if LANE_T is not None else t
    while dim_per_group % d:
        d //= 2
    return d, w, max(t, _next_pow2(n))


def _lane_backward(ctx, dout, dhlast):
    u, delta, A, Bg, Cg, D, z, delta_bias, initial_state, ckpt = ctx.saved_tensors
    batch, dim, L = u.shape
    G, N = Bg.shape[1], Bg.shape[2]
    dpg = dim // G
    lane_d, lane_w, lane_t = ctx.lane_cfg
    nc = ckpt.shape[1] - 1
    dout = dout.contiguous()
    dev = u.device
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA = torch.empty(batch, dim, N, device=dev, dtype=torch.float32)
    n_prog = triton.cdiv(dim, lane_d)
    dB = torch.empty(batch, n_prog, N, L, device=dev, dtype=torch.float32)
    dC = torch.empty(batch, n_prog, N, L, device=dev, dtype=torch.float32)
    dD = torch.empty(batch, dim, device=dev, dtype=torch.float32) if D is not None else None
    dbias = torch.empty(batch, dim, device=dev, dtype=torch.float32) if delta_bias is not None else None
    dh = (dhlast.to(torch.float32).contiguous().clone() if dhlast is not None
          else torch.zeros(batch, dim, N, device=dev, dtype=torch.float32))
    _ss_bwd_lane_kernel[(batch, triton.cdiv(dim, lane_d))](
        u, delta, A, Bg, Cg, D if D is not None else u, z if z is not None else u,
        delta_bias if delta_bias is not None else u, ckpt, dout, dh,
        du, ddelta, dz if dz is not None else u, dA, dB, dC,
        dD if dD is not None else dA, dbias if dbias is not None else dA,
        dim, L, N, dpg, nc,
        u.stride(0), u.stride(1), Bg.stride(0), Bg.stride(1), Bg.stride(2),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=ctx.softplus, BLOCK_D=lane_d, BLOCK_T=lane_t, num_warps=lane_w,
    )
    # Programs never straddle a group (lane_d divides dim / groups): sum per group.
    dB = dB.view(batch, G, n_prog // G, N, L).sum(2)
    dC = dC.view(batch, G, n_prog // G, N, L).sum(2)
    dh0 = None
    if initial_state is not None:
        # d h_init = a_0 * dh_0, with a_0 = exp(delta_0 * A): one step, done in PyTorch.
        d0 = delta[:, :, 0].float()
        if delta_bias is not None:
            d0 = d0 + delta_bias.float()
        if ctx.softplus:
            d0 = torch.nn.functional.softplus(d0)
        dh0 = (torch.exp(d0[:, :, None] * A.float()) * dh).to(initial_state.dtype)
    b_shape, c_shape, b_dtype, c_dtype = ctx.shapes
    return (du, ddelta, dA.sum(0).to(A.dtype), dB.reshape(b_shape).to(b_dtype),
            dC.reshape(c_shape).to(c_dtype), dD.sum(0).to(D.dtype) if D is not None else None,
            dz, dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
            dh0, None, None)
# Segmented forward (FORWARD_VARIANT = "segment", see _ss_fwd_seg_kernel; offline analysis
# in benchmarks/gpu_notes.md, not yet timed). Knobs, flipped by benchmarks/gpu.py:
SEG_T = 128      # steps per segment without gradients; with gradients the segment is the
#                  lane backward's chunk (its checkpoints are the segment carries)
SEG_WARPS = 4    # warps per program, one channel per thread: 32 * SEG_WARPS channels
SEG_KB = 2       # steps per B/C vector load (a power of two dividing the x tile)
SEG_KX = None    # steps per u/delta/z/out tile; None: one 16-byte vector per thread
SEG_MAX_N = 32   # larger d_state runs the lane forward (the state would not fit registers)
SEG_POLY1 = 0    # states per step whose exp runs on the FMA pipe in pass 1 (MUFU relief)
SEG_POLY3 = 0    # the same in pass 3


def _seg_forward(u, delta, A, Bg, Cg, D, z, delta_bias, h0, softplus, last, seg_t, out):
    """Runs the segmented forward (B/C repacking, pass 1, carry composition, pass 3) into
    ``out``; returns the carry tensor (b, n_seg + 1, dim, N) float32 (slot s: state
    entering segment s; slot n_seg, the final state, is filled only when ``last``)."""
    batch, dim, L = u.shape
    G, N = Bg.shape[1], Bg.shape[2]
    kx = SEG_KX or max(16 // u.element_size(), 1)
    kb = min(SEG_KB, kx)
    if seg_t % kx or kx % kb:
        raise ValueError(f"segment length {seg_t}, x tile {kx}, B/C vector {kb} do not nest")
    block_c = min(32 * SEG_WARPS, _next_pow2(dim))
    warps = max(1, block_c // 32)
    n_seg = triton.cdiv(L, seg_t)
    Lp = triton.cdiv(L, kx) * kx
    dev = u.device
    BC = torch.empty(batch * G, Lp * 2 * N, device=dev, dtype=torch.float32)
    blk = 1024
    _ss_seg_bc_kernel[(triton.cdiv(Lp * 2 * N, blk), batch * G)](
        Bg, Cg, BC, L, Lp, NS=N, KB=kb, BLOCK=blk, num_warps=4)
    carry = torch.empty(batch, n_seg + 1, dim, N, device=dev, dtype=torch.float32)
    dsum = torch.empty(batch, n_seg, dim, device=dev, dtype=torch.float32)
    n_use = n_seg if last else n_seg - 1     # segments whose end state is needed
    args = (u, delta, A, BC, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u, carry, dsum, out,
            dim, L, G, dim // G, n_seg, Lp, u.stride(0), u.stride(1))
    meta = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=softplus, FAST=not _interpreting(), NS=N, BLOCK_C=block_c,
                SEG_T=seg_t, KX=kx, KB=kb, num_warps=warps)
    if n_use > 0:
        _ss_fwd_seg_kernel[(triton.cdiv(dim, block_c), n_use, batch)](
            *args, PASS=1, POLY=min(SEG_POLY1, N), **meta)
    block_e = 512
    _ss_seg_carry_kernel[(triton.cdiv(dim * N, block_e), batch)](
        A, h0 if h0 is not None else carry, carry, dsum, dim, N, n_seg, n_use,
        HAS_H0=h0 is not None, BLOCK_E=block_e, SCH=8, num_warps=4)
    _ss_fwd_seg_kernel[(triton.cdiv(dim, block_c), n_seg, batch)](
        *args, PASS=3, POLY=min(SEG_POLY3, N), **meta)
    return carry


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


SEQ_WARPS = 1
SEQ_CHANNELS = 1   # channels per thread in the per-step kernel


def _seq_warps(dim_per_group: int, n: int) -> int:
    """Warps per program of the per-step kernel (32 * SEQ_CHANNELS channels each), 0 if it
    does not apply: a program must stay inside one group, and the state (n per channel and
    thread) must fit in registers."""
    if FORWARD_VARIANT != "seq" or n * SEQ_CHANNELS > 32:
        return 0
    for w in (SEQ_WARPS, 1):
        if dim_per_group % (32 * w * SEQ_CHANNELS) == 0:
            return w
    return 0


# Chunk length shared by forward and backward (the stored chunk-entry states depend on it).
def _chunk_t(n: int) -> int:
    return 32 if max(_next_pow2(n), 2) <= 32 else 16


def _prep(u, delta, B, C, z):
    def c(t):
        return None if t is None else (t if t.is_contiguous() else t.contiguous())
    u, delta, z = c(u), c(delta), c(z)
    Bg = B.unsqueeze(1) if B.dim() == 3 else B   # (b, g, n, L)
    Cg = C.unsqueeze(1) if C.dim() == 3 else C
    return u, delta, c(Bg), c(Cg), z


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                return_last_state):
        b_in, c_in = B, C
        u, delta, Bg, Cg, z = _prep(u, delta, B, C, z)
        A = A.contiguous()
        batch, dim, L = u.shape
        G, N = Bg.shape[1], Bg.shape[2]
        dpg = dim // G
        block_t = _chunk_t(N)
        n_chunks = triton.cdiv(L, block_t)
        block_d, block_n, _, num_warps = _config(dpg, N, backward=False)
        need_grad = ctx.needs_input_grad is not None and any(ctx.needs_input_grad[:9])
        out = torch.empty_like(u)
        hlast = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32) \
            if return_last_state else out
        ckpt = torch.empty(batch, n_chunks, dim, N, device=u.device, dtype=torch.float32) \
            if need_grad and FORWARD_VARIANT not in ("lane", "segment") else out
        h0 = initial_state.contiguous() if initial_state is not None else None
        seq_warps = _seq_warps(dpg, N)
        lane_fwd = FORWARD_VARIANT == "lane" or (FORWARD_VARIANT == "segment" and N > SEG_MAX_N)
        if FORWARD_VARIANT == "segment" and not lane_fwd:
            # With gradients the segments are the lane backward's chunks: the carries are
            # its chunk-entry checkpoints.
            seg_t = SEG_T
            if need_grad:
                ctx.lane_cfg = _lane_config(dpg, N, need_grad, batch * dim)
                seg_t = ctx.lane_cfg[2]
            ckpt = _seg_forward(u, delta, A, Bg, Cg, D, z, delta_bias, h0, bool(delta_softplus),
                                bool(return_last_state), seg_t, out)
            if return_last_state:
                hlast = ckpt[:, -1].clone()
        elif lane_fwd:
            lane_d, lane_w, lane_t = _lane_config(dpg, N, need_grad, batch * dim)
            ctx.lane_cfg = (lane_d, lane_w, lane_t)
            nc = triton.cdiv(L, lane_t)
            ckpt = torch.empty(batch, nc + 1, dim, N, device=u.device, dtype=torch.float32)
            if h0 is not None:
                ckpt[:, 0] = h0
            else:
                ckpt[:, 0] = 0
            _ss_fwd_lane_kernel[(batch, triton.cdiv(dim, lane_d))](
                u, delta, A, Bg, Cg, D if D is not None else u, z if z is not None else u,
                delta_bias if delta_bias is not None else u, out, ckpt,
                dim, L, N, dpg, nc,
                u.stride(0), u.stride(1), Bg.stride(0), Bg.stride(1), Bg.stride(2),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), STORE_CKPT=need_grad or bool(return_last_state),
                BLOCK_D=lane_d, BLOCK_T=lane_t, num_warps=lane_w,
            )
            if return_last_state:
                hlast = ckpt[:, nc].clone()
        elif seq_warps:
            # Per-step kernel: B and C time-major (b, g, 2, L, n) so a step reads one vector.
            L8 = triton.cdiv(L, 8) * 8
            BC = torch.zeros(batch, G, L8, block_n, 2, device=u.device, dtype=torch.float32)
            BC[:, :, :L, :N, 0] = Bg.transpose(-1, -2)
            BC[:, :, :L, :N, 1] = Cg.transpose(-1, -2)
            seq_d = 32 * seq_warps * SEQ_CHANNELS
            _ss_fwd_seq_kernel[(batch, triton.cdiv(dim, seq_d))](
                u, delta, A, BC, D if D is not None else u, z if z is not None else u,
                delta_bias if delta_bias is not None else u, h0 if h0 is not None else u,
                out, hlast, ckpt,
                dim, L, N, dpg, n_chunks, L8,
                u.stride(0), u.stride(1), BC.stride(0), BC.stride(1), BC.stride(-1),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), HAS_H0=h0 is not None,
                STORE_LAST=bool(return_last_state), STORE_CKPT=need_grad, CKPT_T=block_t,
                BLOCK_D=seq_d, BLOCK_N=block_n, num_warps=seq_warps,
            )
        else:
            grid = (batch, triton.cdiv(dim, block_d))
            _ss_fwd_kernel[grid](
                u, delta, A, Bg, Cg, D if D is not None else u, z if z is not None else u,
                delta_bias if delta_bias is not None else u, h0 if h0 is not None else u,
                out, hlast, ckpt,
                dim, L, N, dpg, n_chunks,
                u.stride(0), u.stride(1), Bg.stride(0), Bg.stride(1), Bg.stride(2),
                HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), HAS_H0=h0 is not None,
                STORE_LAST=bool(return_last_state), STORE_CKPT=need_grad,
                BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t, num_warps=num_warps,
            )
        if need_grad:
            ctx.save_for_backward(u, delta, A, Bg, Cg, D, z, delta_bias, initial_state, ckpt)
            ctx.softplus = bool(delta_softplus)
            ctx.lane = FORWARD_VARIANT in ("lane", "segment")
            ctx.shapes = (b_in.shape, c_in.shape, b_in.dtype, c_in.dtype)
        if return_last_state:
            return out, hlast
        return out

    @staticmethod
    def backward(ctx, dout, *rest):
        if ctx.lane:
            return _lane_backward(ctx, dout, rest[0] if rest else None)
        u, delta, A, Bg, Cg, D, z, delta_bias, initial_state, ckpt = ctx.saved_tensors
        dhlast = rest[0] if rest else None
        batch, dim, L = u.shape
        G, N = Bg.shape[1], Bg.shape[2]
        dpg = dim // G
        block_t = _chunk_t(N)
        n_chunks = ckpt.shape[1]
        block_d, block_n, _, num_warps = _config(dpg, N, backward=True)
        dout = dout.contiguous()
        du = torch.empty_like(u)
        ddelta = torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None
        dA = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32)
        dB = torch.zeros(Bg.shape, device=u.device, dtype=torch.float32)
        dC = torch.zeros(Cg.shape, device=u.device, dtype=torch.float32)
        dD = torch.empty(batch, dim, device=u.device, dtype=torch.float32) if D is not None else None
        dbias = torch.empty(batch, dim, device=u.device, dtype=torch.float32) \
            if delta_bias is not None else None
        dh0 = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32) \
            if initial_state is not None else None
        if dhlast is not None:
            dhlast = dhlast.contiguous()
        grid = (batch, triton.cdiv(dim, block_d))
        _ss_bwd_kernel[grid](
            u, delta, A, Bg, Cg, D if D is not None else u, z if z is not None else u,
            delta_bias if delta_bias is not None else u, ckpt,
            dout, dhlast if dhlast is not None else u,
            du, ddelta, dz if dz is not None else u, dA, dB, dC,
            dD if dD is not None else dA, dbias if dbias is not None else dA,
            dh0 if dh0 is not None else dA,
            dim, L, N, dpg, n_chunks,
            u.stride(0), u.stride(1), Bg.stride(0), Bg.stride(1), Bg.stride(2),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=ctx.softplus, HAS_DHLAST=dhlast is not None, STORE_DH0=dh0 is not None,
            BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t, num_warps=num_warps,
        )
        b_shape, c_shape, b_dtype, c_dtype = ctx.shapes
        dB = dB.reshape(b_shape).to(b_dtype)
        dC = dC.reshape(c_shape).to(c_dtype)
        dA = dA.sum(0).to(A.dtype)
        dD = dD.sum(0).to(D.dtype) if D is not None else None
        dbias = dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None
        dh0 = dh0.to(initial_state.dtype) if dh0 is not None else None
        return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0, None, None


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
):
    """Triton selective scan; same arguments and results as :func:`selective_scan_ref`.

    Shapes: u, delta, z (batch, dim, L); A (dim, n); B, C (batch, n, L) or
    (batch, groups, n, L); D, delta_bias (dim,); initial_state (batch, dim, n).
    Returns out (batch, dim, L) in u's dtype and, with ``return_last_state``, the last
    state (batch, dim, n) in float32. Differentiable in every tensor argument.
    """
    if u.dtype == torch.float64:
        # The kernels compute in float32; keep float64 inputs at float64 accuracy.
        from .torch import selective_scan_torch

        return selective_scan_torch(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                    delta_softplus=delta_softplus,
                                    return_last_state=return_last_state,
                                    initial_state=initial_state)
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                  delta_softplus, return_last_state)
