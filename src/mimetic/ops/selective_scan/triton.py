"""Mamba-1 selective scan as Triton kernels (forward and backward).

Math (see ``reference.py``), per batch b, channel d, state n, step t:

    delta_t = softplus(delta_raw_t + bias[d])                  (both optional)
    a_t     = exp(delta_t * A[d, n]),   b_t = delta_t * u_t * B_t[n]
    h_t     = a_t * h_{t-1} + b_t
    y_t     = sum_n C_t[n] * h_t + D[d] * u_t,   out_t = y_t * silu(z_t)

Everything (softplus, discretization, scan, D skip, z gate) is fused; u, delta, z, out
are read/written once as tiles contiguous in time. Two kernel layouts, the fastest pair
measured (timings: benchmarks/RESULTS.md, "Selective scan"); which one runs and with
which tiles is a :class:`~.triton_config.ScanConfig`, by default
:func:`~.triton_config.default_config`'s:

* segment (the forward for d_state <= ``SEGMENT_MAX_STATE``): one thread per (channel,
  time segment), state in registers, steps one at a time; segments run from zero (pass
  1), their carries are composed (pass 2), then re-run with the true carry (pass 3).
  Forward only: the lane backward follows it.
* lane (the backward; the forward for larger d_state): a (channels, steps) tile with
  time spread over the lanes of a warp and several consecutive steps per thread;
  states handled one n at a time, each scanned along time with ``tl.associative_scan``
  (sequential inside a thread, then across lanes). Forward and backward
  (``_ss_fwd_lane_kernel`` / ``_ss_bwd_lane_kernel``).

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
reduces its own channels and stores per-program partials (summed after). dA, dD and
d(bias) sum over batch: each program writes its own row, summed afterwards in PyTorch.

The lane kernels are limited by the warp shuffles / shared memory (MIO) of their
cross-lane scans and reductions, not by memory bandwidth (benchmarks/RESULTS.md compares
them with mamba_ssm's CUDA kernel).

Memory layouts: both kernels take every (b, dim, L) tensor -- u, delta, z, out, and in
backward dout, du, ddelta, dz -- and B, C with their own batch / channel / state
strides; only the time axis must have unit stride. So
strided views (Mamba's x and z as slices of one projection, B and C as slices of
x_proj's output, a transposed gradient) are read in place, and each gradient is
allocated like its input (``torch.empty_like``: the same strides for a dense input),
which is the layout the caller's backward consumes. ``out`` takes the layout of z (of u
without z).

Entry points: :func:`selective_scan_fwd` / :func:`selective_scan_bwd` (plain functions,
also the torch.compile op's forward and backward, each taking the call's ``ScanConfig``),
wrapped for eager autograd by ``_SelectiveScanFn`` and :func:`selective_scan_triton`.

Layout of the code: the kernels live in ``triton_lane.py`` and ``triton_segment.py``,
their shared helpers in ``triton_common.py``, the launch configuration in
``triton_config.py``; this file holds the launchers, the autograd Function and the
public function.
"""
from __future__ import annotations

import torch
import triton

from .._dispatch import triton_interpret
from .triton_config import LaneTiles, ScanConfig, SegmentTiles, default_config
from .triton_lane import _ss_bwd_lane_kernel, _ss_fwd_lane_kernel
from .triton_segment import _ss_fwd_seg_kernel, _ss_seg_bc_kernel, _ss_seg_carry_kernel

__all__ = ["ScanConfig", "default_config", "selective_scan_triton"]


# ----------------------------------------------------------------------------- launch

def _lane_forward(u, delta, A, Bg, Cg, D, z, delta_bias, h0, softplus, store_ckpt, tiles: LaneTiles,
                  out):
    """Runs the lane forward into ``out``; returns the checkpoint tensor (b, n_chunks + 1,
    dim, N) float32 (slot c: state entering chunk c, the last slot the final state), or
    None without ``store_ckpt``."""
    batch, dim, L = u.shape
    N = A.shape[1]
    dpg = dim // Bg.shape[1]
    nc = triton.cdiv(L, tiles.steps)
    # Slot 0 (the initial state) is written by the kernel; without STORE_CKPT nothing is
    # stored and no checkpoint buffer is needed.
    ckpt = (torch.empty(batch, nc + 1, dim, N, device=u.device, dtype=torch.float32)
            if store_ckpt else out)
    z_or_u = z if z is not None else u
    _ss_fwd_lane_kernel[(batch, triton.cdiv(dim, tiles.channels))](
        u, delta, A, Bg, Cg, D if D is not None else u, z_or_u,
        delta_bias if delta_bias is not None else u, h0 if h0 is not None else u,
        out, ckpt,
        dim, L, N, dpg, nc,
        *_bd_strides(u), *_bd_strides(delta), *_bd_strides(z_or_u), *_bd_strides(out),
        *_bgn_strides(Bg), *_bgn_strides(Cg),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus, HAS_H0=h0 is not None, STORE_CKPT=store_ckpt,
        BLOCK_D=tiles.channels, BLOCK_T=tiles.steps, num_warps=tiles.warps,
    )
    return ckpt if store_ckpt else None


def _lane_backward(u, delta, A, Bg, Cg, D, z, delta_bias, initial_state, ckpt, softplus,
                   dout, dhlast, tiles: LaneTiles):
    batch, dim, L = u.shape
    G, N = Bg.shape[1], Bg.shape[2]
    dpg = dim // G
    lane_d, lane_w, lane_t = tiles.channels, tiles.warps, tiles.steps
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


def _seg_forward(u, delta, A, Bg, Cg, D, z, delta_bias, h0, softplus, last, tiles: SegmentTiles,
                 out):
    """Runs the segmented forward (B/C repacking, pass 1, carry composition, pass 3; see
    ``_ss_fwd_seg_kernel`` and docs/kernels.md) into ``out``; returns the carry tensor
    (b, n_seg + 1, dim, N) float32 (slot s: state entering segment s; slot n_seg, the
    final state, is filled only when ``last``)."""
    batch, dim, L = u.shape
    G, N = Bg.shape[1], Bg.shape[2]
    seg_t, kx, kb = tiles.steps, tiles.x_steps, tiles.bc_steps
    block_c = tiles.channels
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
                SEG_T=seg_t, KX=kx, KB=kb, num_warps=tiles.warps, PREFETCH=tiles.prefetch)
    if n_use > 0:
        _ss_fwd_seg_kernel[(triton.cdiv(dim, block_c), n_use, batch)](*args, PASS=1, **meta)
    block_e = 512
    _ss_seg_carry_kernel[(triton.cdiv(dim * N, block_e), batch)](
        A, h0 if h0 is not None else carry, carry, dsum, dim, N, n_seg, n_use,
        HAS_H0=h0 is not None, BLOCK_E=block_e, SCH=8, num_warps=4)
    _ss_fwd_seg_kernel[(triton.cdiv(dim, block_c), n_seg, batch)](*args, PASS=3, **meta)
    return carry


# ----------------------------------------------------------------------------- layouts

def _unit_time_stride(t):
    """t itself when its last (time) axis has unit stride -- the lane and segment kernels
    take any other strides -- else a contiguous copy; None stays None."""
    if t is None or t.stride(-1) == 1 or t.shape[-1] == 1:
        return t
    return t.contiguous()


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
    return _out_like(_unit_time_stride(u), _unit_time_stride(z))


def _bd_strides(t):
    """(batch, channel) strides of a (b, dim, L) tensor whose time stride is 1."""
    return t.stride(0), t.stride(1)


def _bgn_strides(M):
    """(batch, group, state) strides of B or C as (b, g, n, L), time stride 1."""
    return M.stride(0), M.stride(1), M.stride(2)


def _kernel_layouts(u, delta, B, C, z):
    """u, delta, B, C, z as the kernels read them, with unit time stride (strided views
    kept as they are). Copies only where needed; B and C keep their rank."""
    fix = _unit_time_stride
    return fix(u), fix(delta), fix(B), fix(C), fix(z)


def _groups(M):
    """B or C as (b, g, n, L)."""
    return M.unsqueeze(1) if M.dim() == 3 else M


def _checked(config, u, A, B, need_grad):
    """``config`` (default: :func:`default_config`), checked against these sizes."""
    if config is None:
        return default_config(u, A, B, need_grad)
    G = 1 if B.dim() == 3 else B.shape[1]
    config.check(u.shape[1] // G, A.shape[1], need_grad)
    return config


def checkpoint_shape(u, A, config: ScanConfig):
    """Shape of the float32 checkpoint tensor :func:`selective_scan_fwd` returns when a
    gradient is needed: the state entering each chunk, and the final state."""
    batch, dim, L = u.shape
    return (batch, triton.cdiv(L, config.chunk_steps) + 1, dim, A.shape[1])


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                       return_last_state, need_grad, config: ScanConfig | None = None):
    """The forward kernels. Returns (out, last state or None, checkpoints or None): the
    checkpoints (float32, :func:`checkpoint_shape`) only with ``need_grad``, for
    :func:`selective_scan_bwd` with the same ``config`` (None: the default)."""
    config = _checked(config, u, A, B, need_grad)
    A = A.contiguous()
    u, delta, B, C, z = _kernel_layouts(u, delta, B, C, z)
    Bg, Cg = _groups(B), _groups(C)
    out = _out_like(u, z)
    h0 = initial_state.contiguous() if initial_state is not None else None
    softplus, last = bool(delta_softplus), bool(return_last_state)
    if config.forward == "segment":
        # With gradients the segments are the lane backward's chunks: the carries are
        # its chunk-entry checkpoints.
        ckpt = _seg_forward(u, delta, A, Bg, Cg, D, z, delta_bias, h0, softplus, last,
                            config.segment, out)
    else:
        ckpt = _lane_forward(u, delta, A, Bg, Cg, D, z, delta_bias, h0, softplus,
                             need_grad or last, config.lane, out)
    hlast = ckpt[:, -1].clone() if last else None
    return out, hlast, ckpt if need_grad else None


def selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                       ckpt, dout, dhlast, config: ScanConfig | None = None):
    """Gradients of (u, delta, A, B, C, D, z, delta_bias, initial_state), each in its
    input's shape and dtype (None for an absent input), from the checkpoints of
    :func:`selective_scan_fwd`. dout (b, d, L); dhlast (b, d, n) or None. ``config``:
    the forward's (None: the default with a gradient)."""
    config = _checked(config, u, A, B, True)
    shape_b, shape_c = B.shape, C.shape
    u, delta, B, C, z = _kernel_layouts(u, delta, B, C, z)  # no copies after the forward's
    grads = _lane_backward(u, delta, A.contiguous(), _groups(B), _groups(C), D, z, delta_bias,
                           initial_state, ckpt, bool(delta_softplus), dout=dout, dhlast=dhlast,
                           tiles=config.lane)
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = grads
    return (du, ddelta, dA.to(A.dtype), dB.reshape(shape_b).to(B.dtype),
            dC.reshape(shape_c).to(C.dtype), dD.to(D.dtype) if D is not None else None, dz,
            dbias.to(delta_bias.dtype) if delta_bias is not None else None, dh0)


class _SelectiveScanFn(torch.autograd.Function):
    """Eager autograd around :func:`selective_scan_fwd` / :func:`selective_scan_bwd`."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                return_last_state, config):
        need_grad = ctx.needs_input_grad is not None and any(ctx.needs_input_grad[:9])
        config = _checked(config, u, A, B, need_grad)
        u, delta, B, C, z = _kernel_layouts(u, delta, B, C, z)  # saved as the kernels read them
        out, last, ckpt = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias,
                                             initial_state, delta_softplus,
                                             return_last_state, need_grad, config)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, ckpt)
            ctx.softplus = bool(delta_softplus)
            ctx.config = config
        return (out, last) if return_last_state else out

    @staticmethod
    def backward(ctx, dout, *rest):
        *inputs, ckpt = ctx.saved_tensors
        grads = selective_scan_bwd(*inputs, ctx.softplus, ckpt, dout, rest[0] if rest else None,
                                   ctx.config)
        return (*grads, None, None, None)


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
    config: ScanConfig | None = None,
):
    """Triton selective scan; same arguments and results as :func:`selective_scan_ref`.

    Shapes: u, delta, z (batch, dim, L); A (dim, n); B, C (batch, n, L) or
    (batch, groups, n, L); D, delta_bias (dim,); initial_state (batch, dim, n).
    Returns out (batch, dim, L) in u's dtype and, with ``return_last_state``, the last
    state (batch, dim, n) in float32. Differentiable in every tensor argument.
    ``config``: the kernels and tiles (None: :func:`default_config` for these inputs and
    whether a gradient is wanted); a config given for a call with gradients must satisfy
    the backward (``ScanConfig.check``). Float64 inputs take the chunked PyTorch path,
    without a config.
    """
    if u.dtype == torch.float64:
        # The kernels compute in float32; keep float64 inputs at float64 accuracy.
        from .chunked import selective_scan_torch

        return selective_scan_torch(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                    delta_softplus=delta_softplus,
                                    return_last_state=return_last_state,
                                    initial_state=initial_state)
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                  delta_softplus, return_last_state, config)
