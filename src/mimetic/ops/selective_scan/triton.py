"""Mamba-1 selective scan as Triton kernels (forward and backward).

Math (see ``reference.py``), per batch b, channel d, state n, step t:

    delta_t = softplus(delta_raw_t + bias[d])                  (both optional)
    a_t     = exp(delta_t * A[d, n]),   b_t = delta_t * u_t * B_t[n]
    h_t     = a_t * h_{t-1} + b_t
    y_t     = sum_n C_t[n] * h_t + D[d] * u_t,   out_t = y_t * silu(z_t)

Everything (softplus, discretization, scan, D skip, z gate) is fused; u, delta, z, out
are read/written once as tiles contiguous in time. Four kernel layouts exist; the
default is the segment forward (``FORWARD_VARIANT``) with the lane backward, the fastest
pair measured (timings: benchmarks/RESULTS.md, "Selective scan"):

* segment (default forward, d_state <= ``SEG_MAX_N``): one thread per (channel, time
  segment), state in registers, steps one at a time; segments run from zero (pass 1),
  their carries are composed (pass 2), then re-run with the true carry (pass 3). Forward
  only: the lane backward follows it.
* lane (the backward; the forward for larger d_state): a (channels, steps) tile with
  time spread over the lanes of a warp and several consecutive steps per thread;
  states handled one n at a time, each scanned along time with ``tl.associative_scan``
  (sequential inside a thread, then across lanes). Forward and backward
  (``_ss_fwd_lane_kernel`` / ``_ss_bwd_lane_kernel``).
* seq: one channel per thread, state (n) in registers, one step at a time; forward only.
* tile: a (channels, n, steps) tile scanned along steps; forward and backward.

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

The lane kernels are limited by the warp shuffles / shared memory (MIO) of their
cross-lane scans and reductions, not by memory bandwidth (benchmarks/RESULTS.md compares
them with mamba_ssm's CUDA kernel).

Memory layouts: the lane and segment kernels (the default path) take every (b, dim, L)
tensor -- u, delta, z, out, and in backward dout, du, ddelta, dz -- and B, C with their
own batch / channel / state strides; only the time axis must have unit stride. So
strided views (Mamba's x and z as slices of one projection, B and C as slices of
x_proj's output, a transposed gradient) are read in place, and each gradient is
allocated like its input (``torch.empty_like``: the same strides for a dense input),
which is the layout the caller's backward consumes. ``out`` takes the layout of z (of u
without z). The older tile / seq kernels assume one shared contiguous layout and get
contiguous copies.

Entry points: :func:`selective_scan_fwd` / :func:`selective_scan_bwd` (plain functions,
also the torch.compile op's forward and backward), wrapped for eager autograd by
``_SelectiveScanFn`` and :func:`selective_scan_triton`.

Layout of the code: the kernels live in ``triton_lane.py``, ``triton_segment.py`` and
``triton_tile.py`` (tile and seq), their shared helpers in ``triton_common.py``; this
file holds the launch configurations, the autograd Function and the public function.
"""
from __future__ import annotations

import functools

import torch
import triton

from .._dispatch import triton_interpret
from .triton_lane import _ss_bwd_lane_kernel, _ss_fwd_lane_kernel
from .triton_segment import _ss_fwd_seg_kernel, _ss_seg_bc_kernel, _ss_seg_carry_kernel
from .triton_tile import _ss_bwd_kernel, _ss_fwd_kernel, _ss_fwd_seq_kernel

__all__ = ["selective_scan_triton"]


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


# Forward kernel choice: "segment" (default; the lane forward where d_state > SEG_MAX_N),
# "lane", "seq" or "tile" (see the module docstring). Benchmarks and tests flip it.
FORWARD_VARIANT = "segment"
# Lane-kernel configurations (channels per program, warps per program, steps per tile),
# the fastest measured (benchmarks/RESULTS.md): without gradients the forward's; with
# gradients the backward's, which dominates, and the forward must then use the same tile
# length (the stored chunk-entry states are per tile). Setting LANE_D / LANE_WARPS /
# LANE_T overrides both (benchmarks do).
LANE_INFER = (4, 4, 256)
LANE_TRAIN = (16, 4, 64)
# Few channels (batch * dim <= 2048, i.e. long sequences at small batch): with 16
# channels per program too few programs run.
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


def _lane_backward(u, delta, A, Bg, Cg, D, z, delta_bias, initial_state, ckpt, softplus,
                   dout, dhlast, lane_cfg):
    batch, dim, L = u.shape
    G, N = Bg.shape[1], Bg.shape[2]
    dpg = dim // G
    lane_d, lane_w, lane_t = lane_cfg
    nc = ckpt.shape[1] - 1
    dout = _unit_time_stride(dout)
    dev = u.device
    du, ddelta, dz = _grad_like(u), _grad_like(delta), _grad_like(z)
    dA = torch.empty(batch, dim, N, device=dev, dtype=torch.float32)
    n_prog = triton.cdiv(dim, lane_d)
    dB = torch.empty(batch, n_prog, N, L, device=dev, dtype=torch.float32)
    dC = torch.empty(batch, n_prog, N, L, device=dev, dtype=torch.float32)
    dD = torch.empty(batch, dim, device=dev, dtype=torch.float32) if D is not None else None
    dbias = torch.empty(batch, dim, device=dev, dtype=torch.float32) if delta_bias is not None else None
    dhlast = dhlast.contiguous() if dhlast is not None else None
    dh = torch.empty(batch, dim, N, device=dev, dtype=torch.float32)  # dh at step 0
    z_or_u, dz_or_du = (z, dz) if z is not None else (u, du)
    _ss_bwd_lane_kernel[(batch, triton.cdiv(dim, lane_d))](
        u, delta, A, Bg, Cg, D if D is not None else u, z_or_u,
        delta_bias if delta_bias is not None else u, ckpt, dout,
        dhlast if dhlast is not None else dh, dh,
        du, ddelta, dz_or_du, dA, dB, dC,
        dD if dD is not None else dA, dbias if dbias is not None else dA,
        dim, L, N, dpg, nc,
        *_bd_strides(u), *_bd_strides(delta), *_bd_strides(z_or_u), *_bd_strides(dout),
        *_bd_strides(du), *_bd_strides(ddelta), *_bd_strides(dz_or_du),
        *_bgn_strides(Bg), *_bgn_strides(Cg),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus, HAS_DHLAST=dhlast is not None,
        BLOCK_D=lane_d, BLOCK_T=lane_t, num_warps=lane_w,
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
        if softplus:
            d0 = torch.nn.functional.softplus(d0)
        dh0 = (torch.exp(d0[:, :, None] * A.float()) * dh).to(initial_state.dtype)
    return (du, ddelta, dA.sum(0), dB, dC, dD.sum(0) if D is not None else None, dz,
            dbias.sum(0) if delta_bias is not None else None, dh0)


# Segmented forward (FORWARD_VARIANT = "segment", see _ss_fwd_seg_kernel and
# docs/kernels.md). Knobs, flipped by benchmarks/gpu.py; the defaults are the fastest
# configuration timed (segment_t64_w4_kb2_p00, benchmarks/RESULTS.md):
SEG_T = 64       # steps per segment without gradients; with gradients the segment is the
#                  lane backward's chunk (its checkpoints are the segment carries)
SEG_WARPS = 4    # warps per program, one channel per thread: 32 * SEG_WARPS channels
SEG_KB = 2       # steps per B/C vector load (a power of two dividing the x tile)
SEG_KX = None    # steps per u/delta/z/out tile; None: one 16-byte vector per thread
SEG_MAX_N = 32   # larger d_state runs the lane forward (the state would not fit registers)
SEG_POLY1 = 0    # states per step whose exp runs on the FMA pipe in pass 1 (MUFU relief)
SEG_POLY3 = 0    # the same in pass 3
# Load the next u/delta/z tile while computing this one: None picks by dtype, on for
# 4-byte inputs only (faster for float32, slower for bf16: benchmarks/RESULTS.md).
SEG_PREFETCH = None


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
        Bg, Cg, BC, L, Lp, G, *_bgn_strides(Bg), *_bgn_strides(Cg),
        NS=N, KB=kb, BLOCK=blk, num_warps=4)
    carry = torch.empty(batch, n_seg + 1, dim, N, device=dev, dtype=torch.float32)
    dsum = torch.empty(batch, n_seg, dim, device=dev, dtype=torch.float32)
    n_use = n_seg if last else n_seg - 1     # segments whose end state is needed
    z_or_u = z if z is not None else u
    args = (u, delta, A, BC, D if D is not None else u, z_or_u,
            delta_bias if delta_bias is not None else u, carry, dsum, out,
            dim, L, G, dim // G, n_seg, Lp,
            *_bd_strides(u), *_bd_strides(delta), *_bd_strides(z_or_u), *_bd_strides(out))
    meta = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                SOFTPLUS=softplus, FAST=not triton_interpret(), NS=N, BLOCK_C=block_c,
                SEG_T=seg_t, KX=kx, KB=kb, num_warps=warps,
                PREFETCH=u.element_size() == 4 if SEG_PREFETCH is None else SEG_PREFETCH)
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


# ----------------------------------------------------------------------------- layouts

def _unit_time_stride(t):
    """t itself when its last (time) axis has unit stride -- the lane and segment kernels
    take any other strides -- else a contiguous copy; None stays None."""
    if t is None or t.stride(-1) == 1 or t.shape[-1] == 1:
        return t
    return t.contiguous()


def _contiguous(t):
    return None if t is None else t.contiguous()  # no copy when already contiguous


def _grad_like(t):
    """Gradient buffer for t (b, dim, L): t's own strides when t is dense (e.g. Mamba's z,
    a feature-major slice of the in_proj output, whose backward reads dz in place), else
    contiguous. torch.empty_like's preserve_format does exactly that."""
    return None if t is None else torch.empty_like(t)


def _out_like(u, z):
    """out (b, dim, L) in u's dtype, laid out like the gate z it is multiplied by (like u
    without z): in Mamba, z's feature-major layout is the one out_proj reads as a matrix
    without a copy."""
    return torch.empty_like(z if z is not None else u, dtype=u.dtype)


def output_like(u, z):
    """An empty out laid out as :func:`selective_scan_fwd` returns it, for the caller's
    u and z (the torch.compile fake kernel's answer, ``ops/_library.py``)."""
    u, _, _, _, z = _kernel_layouts(u, None, None, None, z)
    return _out_like(u, z) if FORWARD_VARIANT in ("lane", "segment") else torch.empty_like(u)


def _bd_strides(t):
    """(batch, channel) strides of a (b, dim, L) tensor whose time stride is 1."""
    return t.stride(0), t.stride(1)


def _bgn_strides(M):
    """(batch, group, state) strides of B or C as (b, g, n, L), time stride 1."""
    return M.stride(0), M.stride(1), M.stride(2)


def _kernel_layouts(u, delta, B, C, z):
    """u, delta, B, C, z as the kernels read them: with unit time stride (strided views
    kept as they are) for the lane and segment kernels, contiguous for the tile / seq
    kernels. Copies only where needed; B and C keep their rank."""
    fix = _unit_time_stride if FORWARD_VARIANT in ("lane", "segment") else _contiguous
    return fix(u), fix(delta), fix(B), fix(C), fix(z)


def _groups(M):
    """B or C as (b, g, n, L)."""
    return M.unsqueeze(1) if M.dim() == 3 else M


def backward_lane_config(u, A, B):
    """The lane backward's (channels, warps, steps) for these shapes, or None when the
    forward variant ("seq", "tile") pairs with the tile backward. The forward with a
    gradient uses the same tiles (its checkpoints are per tile)."""
    if FORWARD_VARIANT not in ("lane", "segment"):
        return None
    batch, dim, _ = u.shape
    G = 1 if B.dim() == 3 else B.shape[1]
    return _lane_config(dim // G, A.shape[1], True, batch * dim)


def checkpoint_shape(u, A, B):
    """Shape of the float32 checkpoint tensor :func:`selective_scan_fwd` returns when a
    gradient is needed: the state entering each chunk (lane / segment: one slot more)."""
    batch, dim, L = u.shape
    N = A.shape[1]
    lane_cfg = backward_lane_config(u, A, B)
    if lane_cfg is None:
        return (batch, triton.cdiv(L, _chunk_t(N)), dim, N)
    return (batch, triton.cdiv(L, lane_cfg[2]) + 1, dim, N)


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                       return_last_state, need_grad):
    """The forward kernels. Returns (out, last state or None, checkpoints or None): the
    checkpoints (float32, :func:`checkpoint_shape`) only with ``need_grad``, for
    :func:`selective_scan_bwd`."""
    A = A.contiguous()
    batch, dim, L = u.shape
    N = A.shape[1]
    G = 1 if B.dim() == 3 else B.shape[1]
    dpg = dim // G
    lane_fwd = FORWARD_VARIANT == "lane" or (FORWARD_VARIANT == "segment" and N > SEG_MAX_N)
    strided = lane_fwd or FORWARD_VARIANT == "segment"   # kernels that take strides
    u, delta, B, C, z = _kernel_layouts(u, delta, B, C, z)
    Bg, Cg = _groups(B), _groups(C)
    block_t = _chunk_t(N)
    n_chunks = triton.cdiv(L, block_t)
    block_d, block_n, _, num_warps = _config(dpg, N, backward=False)
    out = _out_like(u, z) if strided else torch.empty_like(u)
    hlast = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32) \
        if return_last_state else out
    ckpt = torch.empty(batch, n_chunks, dim, N, device=u.device, dtype=torch.float32) \
        if need_grad and not strided else out
    h0 = initial_state.contiguous() if initial_state is not None else None
    seq_warps = _seq_warps(dpg, N)
    if FORWARD_VARIANT == "segment" and not lane_fwd:
        # With gradients the segments are the lane backward's chunks: the carries are
        # its chunk-entry checkpoints.
        seg_t = SEG_T
        if need_grad:
            seg_t = _lane_config(dpg, N, need_grad, batch * dim)[2]
        ckpt = _seg_forward(u, delta, A, Bg, Cg, D, z, delta_bias, h0, bool(delta_softplus),
                            bool(return_last_state), seg_t, out)
        if return_last_state:
            hlast = ckpt[:, -1].clone()
    elif lane_fwd:
        lane_d, lane_w, lane_t = _lane_config(dpg, N, need_grad, batch * dim)
        nc = triton.cdiv(L, lane_t)
        store_ckpt = need_grad or bool(return_last_state)
        # Slot 0 (the initial state) is written by the kernel; without STORE_CKPT
        # nothing is stored and no checkpoint buffer is needed.
        ckpt = (torch.empty(batch, nc + 1, dim, N, device=u.device, dtype=torch.float32)
                if store_ckpt else out)
        z_or_u = z if z is not None else u
        _ss_fwd_lane_kernel[(batch, triton.cdiv(dim, lane_d))](
            u, delta, A, Bg, Cg, D if D is not None else u, z_or_u,
            delta_bias if delta_bias is not None else u, h0 if h0 is not None else u,
            out, ckpt,
            dim, L, N, dpg, nc,
            *_bd_strides(u), *_bd_strides(delta), *_bd_strides(z_or_u), *_bd_strides(out),
            *_bgn_strides(Bg), *_bgn_strides(Cg),
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=bool(delta_softplus), HAS_H0=h0 is not None, STORE_CKPT=store_ckpt,
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
    return out, hlast if return_last_state else None, ckpt if need_grad else None


def selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                       ckpt, dout, dhlast, lane_cfg=None):
    """Gradients of (u, delta, A, B, C, D, z, delta_bias, initial_state), each in its
    input's shape and dtype (None for an absent input), from the checkpoints of
    :func:`selective_scan_fwd`. dout (b, d, L); dhlast (b, d, n) or None. ``lane_cfg``:
    :func:`backward_lane_config` at the time of the forward (recomputed when None)."""
    softplus = bool(delta_softplus)
    if lane_cfg is None:
        lane_cfg = backward_lane_config(u, A, B)
    shape_b, shape_c = B.shape, C.shape
    u, delta, B, C, z = _kernel_layouts(u, delta, B, C, z)  # no copies after the forward's
    run = (functools.partial(_lane_backward, lane_cfg=lane_cfg) if lane_cfg is not None
           else _tile_backward)
    grads = run(u, delta, A.contiguous(), _groups(B), _groups(C), D, z, delta_bias,
                initial_state, ckpt, softplus, dout=dout, dhlast=dhlast)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = grads
    return (du, ddelta, dA.to(A.dtype), dB.reshape(shape_b).to(B.dtype),
            dC.reshape(shape_c).to(C.dtype), dD.to(D.dtype) if D is not None else None, dz,
            dbias.to(delta_bias.dtype) if delta_bias is not None else None, dh0)


def _tile_backward(u, delta, A, Bg, Cg, D, z, delta_bias, initial_state, ckpt, softplus,
                   dout, dhlast):
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
        SOFTPLUS=softplus, HAS_DHLAST=dhlast is not None, STORE_DH0=dh0 is not None,
        BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t, num_warps=num_warps,
    )
    dh0 = dh0.to(initial_state.dtype) if dh0 is not None else None
    return (du, ddelta, dA.sum(0), dB, dC, dD.sum(0) if D is not None else None, dz,
            dbias.sum(0) if delta_bias is not None else None, dh0)


class _SelectiveScanFn(torch.autograd.Function):
    """Eager autograd around :func:`selective_scan_fwd` / :func:`selective_scan_bwd`."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                return_last_state):
        need_grad = ctx.needs_input_grad is not None and any(ctx.needs_input_grad[:9])
        u, delta, B, C, z = _kernel_layouts(u, delta, B, C, z)  # saved as the kernels read them
        out, last, ckpt = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias,
                                             initial_state, delta_softplus,
                                             return_last_state, need_grad)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, ckpt)
            ctx.softplus = bool(delta_softplus)
            ctx.lane_cfg = backward_lane_config(u, A, B)
        return (out, last) if return_last_state else out

    @staticmethod
    def backward(ctx, dout, *rest):
        *inputs, ckpt = ctx.saved_tensors
        grads = selective_scan_bwd(*inputs, ctx.softplus, ckpt, dout, rest[0] if rest else None,
                                   ctx.lane_cfg)
        return (*grads, None, None)


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
        from .chunked import selective_scan_torch

        return selective_scan_torch(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                    delta_softplus=delta_softplus,
                                    return_last_state=return_last_state,
                                    initial_state=initial_state)
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                  delta_softplus, return_last_state)
