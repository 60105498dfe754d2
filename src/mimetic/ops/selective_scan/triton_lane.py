"""Selective-scan kernels of the "lane" layout: a (channels, steps) tile with time across
the lanes of a warp. Its backward is the backward of every configuration; its forward
runs where the segment forward does not (``ScanConfig.forward == "lane"``, by default
for d_state above ``SEGMENT_MAX_STATE``). See ``triton.py``.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import _affine_fwd, _load_delta, _row_offsets

# ------------------------------------------------------------- forward, time-across-lanes

@triton.jit
def _ss_fwd_lane_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, ckpt_ptr,
    dim, L, N, dim_per_group, n_chunks,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_o_b, s_o_d,
    s_b_b, s_b_g, s_b_n, s_c_b, s_c_g, s_c_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, STORE_CKPT: tl.constexpr,
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

    ``ckpt`` (b, n_chunks + 1, dim, N) float32, written only with STORE_CKPT: slot 0
    receives the initial state (``h0`` (b, dim, N) with HAS_H0, else zeros), slot c + 1
    the state after chunk c -- the chunk-entry states the backward needs, the last slot
    being the final state.

    Layouts: u, delta, z and out are (b, dim, L) with unit stride in time and their own
    batch / channel strides (``s_u_*``, ``s_dt_*``, ``s_z_*``, ``s_o_*``); B and C are
    (b, g, N, L) with unit stride in time and strides ``s_b_*`` / ``s_c_*``.
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
    if HAS_H0:
        hc = tl.load(h0_ptr + (pid_b * dim + offs_d[:, None]) * N + offs_tl[None, :],
                     mask=mask_dn, other=0.0).to(tl.float32)
    else:
        hc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    if STORE_CKPT:
        tl.store(slot, hc, mask=mask_dn)

    u_row = _row_offsets(pid_b, offs_d, s_u_b, s_u_d)
    dt_row = _row_offsets(pid_b, offs_d, s_dt_b, s_dt_d)
    z_row = _row_offsets(pid_b, offs_d, s_z_b, s_z_d)
    o_row = _row_offsets(pid_b, offs_d, s_o_b, s_o_d)
    b_base = pid_b * s_b_b + group * s_b_g
    c_base = pid_b * s_c_b + group * s_c_g
    for c in range(0, n_chunks):
        offs_t = c * BLOCK_T + offs_tl
        mask_t = offs_t < L
        m_dt = mask_d[:, None] & mask_t[None, :]
        # B/C rows are loaded through a (BLOCK_D, BLOCK_T) pointer tile (the same row for
        # every channel) so they arrive in the layout of u/delta with no shuffling.
        m_bc = (zero_d[:, None] == 0) & mask_t[None, :]
        t_offs = offs_t[None, :]
        dt, _ = _load_delta(delta_ptr, dt_row + t_offs, m_dt, bias, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + u_row + t_offs, mask=m_dt, other=0.0).to(tl.float32)
        dtu = dt * u
        y = Dv[:, None] * u
        hc_next = hc
        bc_t = t_offs + zero_d[:, None]
        for n in range(0, N):
            a2 = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32)
            Bn = tl.load(B_ptr + (b_base + n * s_b_n) + bc_t, mask=m_bc, other=0.0).to(tl.float32)
            Cn = tl.load(C_ptr + (c_base + n * s_c_n) + bc_t, mask=m_bc, other=0.0).to(tl.float32)
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
            zz = tl.load(z_ptr + z_row + t_offs, mask=m_dt, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + o_row + t_offs, y.to(out_ptr.dtype.element_ty), mask=m_dt)
        if STORE_CKPT:
            tl.store(slot + (c + 1) * dim * N, hc, mask=mask_dn)


@triton.jit
def _ss_bwd_lane_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr,
    dout_ptr, dhlast_ptr, dh0_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    dim, L, N, dim_per_group, n_chunks,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_do_b, s_do_d,
    s_du_b, s_du_d, s_ddt_b, s_ddt_d, s_dz_b, s_dz_d,
    s_b_b, s_b_g, s_b_n, s_c_b, s_c_g, s_c_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_DHLAST: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Backward in the layout of :func:`_ss_fwd_lane_kernel`, chunks in reverse order.

    Per chunk and state n: recompute the chunk's states from the stored entry state
    (forward scan), run the adjoint dh_t = C_t dy_t + a_{t+1} dh_{t+1} as a reverse scan
    from the carried dh, and accumulate the gradients (see the module docstring). The dh
    carry and the dA sums live in registers as (BLOCK_D, BLOCK_T) tiles, column j for
    state j (like ``hc`` in the forward). The carry starts from d(last state),
    ``dhlast_ptr`` (b, dim, N) with HAS_DHLAST, else zeros; dh at step 0 is stored into
    ``dh0_ptr`` (b, dim, N) float32. dB and dC sum over the channels of a group: reduced
    over the program's channels (one joint reduction) and stored per program into
    ``dB_ptr``/``dC_ptr`` (b, programs, N, L), summed by the caller.

    Layouts as in the forward: every (b, dim, L) tensor -- u, delta, z, dout and the
    gradients du, ddelta, dz -- has unit stride in time and its own batch / channel
    strides, so each gradient is written straight into the layout its caller wants.
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
    if HAS_DHLAST:
        dhc = tl.load(dhlast_ptr + state_tile, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        dhc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    dAc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
    # dB/dC partials: (b, programs along dim, N, L) float32.
    part_base = (pid_b * tl.num_programs(1) + pid_d) * N * L

    u_row = _row_offsets(pid_b, offs_d, s_u_b, s_u_d)
    dt_row = _row_offsets(pid_b, offs_d, s_dt_b, s_dt_d)
    z_row = _row_offsets(pid_b, offs_d, s_z_b, s_z_d)
    do_row = _row_offsets(pid_b, offs_d, s_do_b, s_do_d)
    b_base = pid_b * s_b_b + group * s_b_g
    c_base = pid_b * s_c_b + group * s_c_g
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        offs_t = c * BLOCK_T + offs_tl
        mask_t = offs_t < L
        m_dt = mask_d[:, None] & mask_t[None, :]
        m_bc = (zero_d[:, None] == 0) & mask_t[None, :]
        t_offs = offs_t[None, :]
        dt, raw = _load_delta(delta_ptr, dt_row + t_offs, m_dt, bias, HAS_BIAS, SOFTPLUS)
        # delta_{t+1}: its decay carries dh_{t+1} back to t; 0 past the end (decay 1) so
        # that d(last state) reaches step L-1 unchanged.
        m_next = mask_d[:, None] & (offs_t[None, :] + 1 < L)
        dt_next, _ = _load_delta(delta_ptr, dt_row + t_offs + 1, m_next, bias, HAS_BIAS,
                                 SOFTPLUS)
        u = tl.load(u_ptr + u_row + t_offs, mask=m_dt, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + do_row + t_offs, mask=m_dt, other=0.0).to(tl.float32)
        dtu = dt * u
        if HAS_Z:
            zz = tl.load(z_ptr + z_row + t_offs, mask=m_dt, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            dy = dout * zz * sz
        else:
            dy = dout
        y = Dv[:, None] * u
        du_acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        ddt_acc = tl.zeros([BLOCK_D, BLOCK_T], dtype=tl.float32)
        st_in = ckpt_ptr + ((pid_b * (n_chunks + 1) + c) * dim + offs_d) * N
        dhc_next = dhc
        bc_t = t_offs + zero_d[:, None]
        for n in range(0, N):
            A_n = tl.load(A_ptr + offs_d * N + n, mask=mask_d, other=0.0).to(tl.float32)
            A2_n = (A_n * 1.4426950408889634)[:, None]
            h_in = tl.load(st_in + n, mask=mask_d, other=0.0)
            Bn = tl.load(B_ptr + (b_base + n * s_b_n) + bc_t, mask=m_bc, other=0.0).to(tl.float32)
            Cn = tl.load(C_ptr + (c_base + n * s_c_n) + bc_t, mask=m_bc, other=0.0).to(tl.float32)
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
        du_offs = _row_offsets(pid_b, offs_d, s_du_b, s_du_d) + t_offs
        ddt_offs = _row_offsets(pid_b, offs_d, s_ddt_b, s_ddt_d) + t_offs
        tl.store(du_ptr + du_offs, du.to(du_ptr.dtype.element_ty), mask=m_dt)
        tl.store(ddelta_ptr + ddt_offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=m_dt)
        if HAS_Z:
            dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
            dz_offs = _row_offsets(pid_b, offs_d, s_dz_b, s_dz_d) + t_offs
            tl.store(dz_ptr + dz_offs, dz.to(dz_ptr.dtype.element_ty), mask=m_dt)
    tl.store(dh0_ptr + state_tile, dhc, mask=mask_dn)
    tl.store(dA_ptr + state_tile, dAc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc, mask=mask_d)
