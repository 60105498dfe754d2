"""Selective-scan forward of the "segment" layout: one thread per (channel, time
segment), the state in registers, three passes. See ``triton.py`` and
benchmarks/logs/gpu_kernel_log.md ("Segmented forward").
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice

from .triton_common import _affine_fwd, _row_offsets

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
def _ss_seg_bc_kernel(B_ptr, C_ptr, BC_ptr, L, Lp, G,
                      s_b_b, s_b_g, s_b_n, s_c_b, s_c_g, s_c_n,
                      NS: tl.constexpr, KB: tl.constexpr, BLOCK: tl.constexpr):
    """B, C (b, g, NS, L), unit stride in time, strides ``s_b_*`` / ``s_c_*`` -> one
    float32 buffer (b*g, Lp/KB, NS, 2, KB), zero-padded in time: the KB-step block of B
    and C for every n is one small contiguous piece, so the forward reads it with
    constant offsets from one pointer (KB-wide vector loads)."""
    bg = tl.program_id(1).to(tl.int64)
    b_idx = bg // G
    g_idx = bg % G
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    blk = o // (2 * NS * KB)
    r = o % (2 * NS * KB)
    n = r // (2 * KB)
    which = (r // KB) % 2
    t = blk * KB + r % KB
    inside = o < Lp * 2 * NS
    m = inside & (t < L)
    src_b = b_idx * s_b_b + g_idx * s_b_g + n * s_b_n + t
    src_c = b_idx * s_c_b + g_idx * s_c_g + n * s_c_n + t
    b = tl.load(B_ptr + src_b, mask=m & (which == 0), other=0.0).to(tl.float32)
    c = tl.load(C_ptr + src_c, mask=m & (which == 1), other=0.0).to(tl.float32)
    tl.store(BC_ptr + bg * Lp * 2 * NS + o, b + c, mask=inside)


@triton.jit
def _seg_x_tiles(delta_ptr, u_ptr, z_ptr, dt_row, u_row, z_row, offs_t, mask_c, L,
                 LOAD_Z: tl.constexpr):
    """The (BLOCK_C, KX) tiles of delta (raw), u and, when LOAD_Z, z at steps ``offs_t``
    (KX,), in their storage dtype; steps past L read 0. Without LOAD_Z the third tile is
    u again (a placeholder that is never used)."""
    m = mask_c[:, None] & (offs_t[None, :] < L)
    t_offs = offs_t[None, :]
    raw = tl.load(delta_ptr + dt_row + t_offs, mask=m, other=0.0)
    u = tl.load(u_ptr + u_row + t_offs, mask=m, other=0.0)
    z = u
    if LOAD_Z:
        z = tl.load(z_ptr + z_row + t_offs, mask=m, other=0.0)
    return raw, u, z


@triton.jit
def _ss_fwd_seg_kernel(
    u_ptr, delta_ptr, A_ptr, BC_ptr, D_ptr, z_ptr, bias_ptr, carry_ptr, dsum_ptr, out_ptr,
    dim, L, G, dim_per_group, n_seg, Lp,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_o_b, s_o_d,
    PASS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, FAST: tl.constexpr,
    NS: tl.constexpr, BLOCK_C: tl.constexpr, SEG_T: tl.constexpr, KX: tl.constexpr,
    KB: tl.constexpr, PREFETCH: tl.constexpr,
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
    With PREFETCH the u / delta / z tiles of step block j + 1 are loaded while block j
    is computed (loop-carried).

    u, delta, z and out are (b, dim, L) with unit stride in time and their own batch /
    channel strides (``s_u_*``, ``s_dt_*``, ``s_z_*``, ``s_o_*``).
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

    u_row = _row_offsets(pid_b, offs_c, s_u_b, s_u_d)                   # (BLOCK_C, 1)
    dt_row = _row_offsets(pid_b, offs_c, s_dt_b, s_dt_d)
    # The B/C loads below are unmasked: channels past dim (a partial last block) take the
    # last group's row, so that they read inside the buffer (their results are dropped).
    group = tl.minimum(offs_c // dim_per_group, G - 1)
    bc_row = (pid_b * G + group) * (Lp * 2 * NS)                         # (BLOCK_C,) int64
    bc_offs = bc_row[:, None] + tl.arange(0, KB)[None, :]                # (BLOCK_C, KB)
    z_row = _row_offsets(pid_b, offs_c, s_z_b, s_z_d)
    LOAD_Z: tl.constexpr = PASS == 3 and HAS_Z
    offs_k = tl.arange(0, KX)
    t_start = seg * SEG_T
    n_blk = tl.cdiv(tl.minimum(L - t_start, SEG_T), KX)
    if PREFETCH:
        raw_nx, u_nx, z_nx = _seg_x_tiles(delta_ptr, u_ptr, z_ptr, dt_row, u_row, z_row,
                                          t_start + offs_k, mask_c, L, LOAD_Z)
    for j in range(0, n_blk):
        t0 = t_start + j * KX
        offs_t = t0 + offs_k
        m = mask_c[:, None] & (offs_t[None, :] < L)
        t_offs = offs_t[None, :]
        # Padding steps get delta 0: a = 1, b = 0, the identity.
        if PREFETCH:
            # This tile was loaded during the previous one; issue the next tile's loads
            # now, so that their latency can hide behind this tile's KX * NS updates
            # (ncu showed the warps waiting on loads in most cycles).
            raw_x, u_x, z_x = raw_nx, u_nx, z_nx
            raw_nx, u_nx, z_nx = _seg_x_tiles(delta_ptr, u_ptr, z_ptr, dt_row, u_row, z_row,
                                              offs_t + KX, mask_c, L, LOAD_Z)
            raw = raw_x.to(tl.float32)
        else:
            # Each load where its value is first used (u after the softplus, z after the
            # scan): loading u and z up front was slower in bf16 (benchmarks/RESULTS.md).
            raw = tl.load(delta_ptr + dt_row + t_offs, mask=m, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw = raw + bias[:, None]
        dt = raw
        if SOFTPLUS:
            dt = _softplus_fast(raw, FAST)
        dt = tl.where(m, dt, 0.0)
        if PREFETCH:
            u = u_x.to(tl.float32)
        else:
            u = tl.load(u_ptr + u_row + t_offs, mask=m, other=0.0).to(tl.float32)
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
                if PREFETCH:
                    zz = z_x.to(tl.float32)
                else:
                    z_offs = _row_offsets(pid_b, offs_c, s_z_b, s_z_d) + t_offs
                    zz = tl.load(z_ptr + z_offs, mask=m, other=0.0).to(tl.float32)
                y = y * zz / (1.0 + tl.exp2(zz * -1.4426950408889634))
            o_offs = _row_offsets(pid_b, offs_c, s_o_b, s_o_d) + t_offs
            tl.store(out_ptr + o_offs, y.to(out_ptr.dtype.element_ty), mask=m)
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
