"""One Mamba-2 decoding step as a single Triton kernel, updating the state in place.

Per batch b, head h (of group g = h // (H / G)), channel p and state n:

    dt'  = clamp(softplus(dt[b, h] + dt_bias[h]), *dt_limit)     (each part optional)
    s    = exp(dt' A[h]) * s + dt' x[b, h, p] B[b, g, n]          (state, float32, in place)
    y    = sum_n s C[b, g, n] + D x,    out = y * silu(z)

One program per (block of P channels, batch * head): it reads its (BLOCK_P, N) state
tile once, writes it back once, and reduces it against C. The PyTorch version
(``step.py``) runs ~15 kernels for the same; at decoding sizes the launches, not the
bytes, are the cost.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._triton_math import _softplus

__all__ = ["ssd_state_update_triton"]


@triton.jit
def _ssd_step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                     out_ptr, H, P, N, heads_per_group, lo, hi,
                     s_s_b, s_s_h, s_s_p, s_x_b, s_x_h, s_dt_b, s_b_b, s_b_g, s_c_b, s_c_g,
                     s_z_b, s_z_h,
                     HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr,
                     HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_Z: tl.constexpr,
                     A_IS_LOG: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    g = h // heads_per_group
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp = offs_p < P
    mn = offs_n < N
    # Time step of this (batch, head): a scalar.
    dt = tl.load(dt_ptr + b * s_dt_b + h).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + h).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    if CLAMP:
        dt = tl.minimum(tl.maximum(dt, lo), hi)
    A = tl.load(A_ptr + h).to(tl.float32)
    if A_IS_LOG:
        A = -tl.exp(A)
    decay = tl.exp(dt * A)
    x = tl.load(x_ptr + b * s_x_b + h * s_x_h + offs_p, mask=mp, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + b * s_b_b + g * s_b_g + offs_n, mask=mn, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_c_b + g * s_c_g + offs_n, mask=mn, other=0.0).to(tl.float32)
    s_ptrs = state_ptr + b * s_s_b + h * s_s_h + offs_p[:, None] * s_s_p + offs_n[None, :]
    m = mp[:, None] & mn[None, :]
    s = tl.load(s_ptrs, mask=m, other=0.0).to(tl.float32)
    s = s * decay + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=m)
    y = tl.sum(s * Cv[None, :], axis=1)                                   # (BLOCK_P,)
    if HAS_D:
        if D_PER_P:
            y += x * tl.load(D_ptr + h * P + offs_p, mask=mp, other=0.0).to(tl.float32)
        else:
            y += x * tl.load(D_ptr + h).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + b * s_z_b + h * s_z_h + offs_p, mask=mp, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(out_ptr + (b * H + h) * P + offs_p, y.to(out_ptr.dtype.element_ty), mask=mp)


def _blocks(n: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_N, num_warps) for d_state n: 512 to 1K state elements a program."""
    block_n = max(16, triton.next_power_of_2(n))
    if block_n <= 32:
        return 32, block_n, 4
    if block_n <= 64:
        return 16, block_n, 4
    if block_n <= 128:
        return 8, block_n, 4
    return 4, block_n, 8


def _inner_contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    """The kernel indexes the last dim with stride 1; copy only when it is not."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def ssd_state_update_triton(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    A_is_log: bool = False,
) -> torch.Tensor:
    """Same contract as :func:`~mimetic.ops.ssd.step.ssd_state_update_torch`. Inputs may be
    strided views (e.g. slices of one projection); no autograd."""
    batch, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    x, dt, B, C, z = (_inner_contiguous(t) for t in (x, dt, B, C, z))
    work = state if state.stride(-1) == 1 else state.contiguous()  # updated in place
    A, D, dt_bias = (t if t is None else t.contiguous() for t in (A, D, dt_bias))
    clamp = tuple(dt_limit) != (0.0, math.inf)
    lo, hi = (float(dt_limit[0]), float(min(dt_limit[1], 3.0e38))) if clamp else (0.0, 0.0)
    out = torch.empty(batch, H, P, device=x.device, dtype=x.dtype)
    block_p, block_n, warps = _blocks(N)
    zs = (z.stride(0), z.stride(1)) if z is not None else (0, 0)
    _ssd_step_kernel[(triton.cdiv(P, block_p), batch * H)](
        work, x, dt, A, B, C, D if D is not None else A, z if z is not None else x,
        dt_bias if dt_bias is not None else A, out, H, P, N, H // G, lo, hi,
        work.stride(0), work.stride(1), work.stride(2), x.stride(0), x.stride(1),
        dt.stride(0), B.stride(0), B.stride(1), C.stride(0), C.stride(1), *zs,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), CLAMP=clamp,
        HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2, HAS_Z=z is not None,
        A_IS_LOG=bool(A_is_log), BLOCK_P=block_p, BLOCK_N=block_n, num_warps=warps)
    if work is not state:
        state.copy_(work)
    return out
