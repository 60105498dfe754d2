"""One Mamba-1 decoding step as a single Triton kernel, updating the state in place.

Per batch b, channel d and state n:

    dt' = softplus(dt[b, d] + dt_bias[d])                         (both optional)
          (dt[b, d] = sum_r dt_low[b, r] W[d, r] with a fused dt projection)
          (A[d, n] = -exp(A_log[d, n]) when given A_log)
    s   = exp(dt' A[d, n]) * s + dt' x[b, d] B[b, n]               (state, float32, in place)
    y   = sum_n s C[b, n] + D[d] x[b, d],    out = y * silu(z[b, d])

One program per (block of channels, batch): it reads its (BLOCK_D, N) state tile once,
writes it back once, and reduces it against C. The PyTorch version (``step.py``) runs
~12 kernels for the same; at decoding sizes the launches, not the bytes, are the cost.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_math import _softplus
from ..ssd.step_triton import _blocks, _inner_contiguous

__all__ = ["selective_state_update_triton"]

# (BLOCK_D, num_warps) instead of the d_state-based default, for tuning runs
# (benchmarks/gpu_steps.py); None: the default.
BLOCK_OVERRIDE: tuple[int, int] | None = None


@triton.jit
def _ss_step_kernel(state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                    w_ptr, out_ptr, dim, N, R, s_s_b, s_s_d, s_x_b, s_dt_b, s_a_d, s_b_b,
                    s_c_b, s_z_b, s_w_d,
                    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
                    HAS_Z: tl.constexpr, A_IS_LOG: tl.constexpr, DT_PROJ: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    pid_d = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    md = offs_d < dim
    mn = offs_n < N
    m = md[:, None] & mn[None, :]
    if DT_PROJ:  # dt = W @ dt_low: a (BLOCK_D, R) tile of the projection per program
        offs_r = tl.arange(0, BLOCK_R)
        mr = offs_r < R
        w = tl.load(w_ptr + offs_d[:, None] * s_w_d + offs_r[None, :],
                    mask=md[:, None] & mr[None, :], other=0.0).to(tl.float32)
        low = tl.load(dt_ptr + b * s_dt_b + offs_r, mask=mr, other=0.0).to(tl.float32)
        dt = tl.sum(w * low[None, :], axis=1)
    else:
        dt = tl.load(dt_ptr + b * s_dt_b + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    x = tl.load(x_ptr + b * s_x_b + offs_d, mask=md, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + offs_d[:, None] * s_a_d + offs_n[None, :], mask=m, other=0.0).to(tl.float32)
    if A_IS_LOG:
        A = -tl.exp(A)
    Bv = tl.load(B_ptr + b * s_b_b + offs_n, mask=mn, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + b * s_c_b + offs_n, mask=mn, other=0.0).to(tl.float32)
    s_ptrs = state_ptr + b * s_s_b + offs_d[:, None] * s_s_d + offs_n[None, :]
    s = tl.load(s_ptrs, mask=m, other=0.0).to(tl.float32)
    s = s * tl.exp(dt[:, None] * A) + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=m)
    y = tl.sum(s * Cv[None, :], axis=1)                                    # (BLOCK_D,)
    if HAS_D:
        y += x * tl.load(D_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + b * s_z_b + offs_d, mask=md, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(out_ptr + b * dim + offs_d, y.to(out_ptr.dtype.element_ty), mask=md)


def selective_state_update_triton(
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
    A_is_log: bool = False,
    dt_proj_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as :func:`~mimetic.ops.selective_scan.step.selective_state_update_torch`:
    state (batch, dim, n) updated in place; x, dt, z (batch, dim); A (dim, n); B, C
    (batch, n); D, dt_bias (dim,); with ``dt_proj_weight`` (dim, rank), dt is (batch, rank).
    Returns y (batch, dim) in x's dtype. Inputs may be strided views (e.g. slices of one
    projection); no autograd."""
    batch, dim = x.shape
    n = A.shape[1]
    x, dt, A, B, C, z, w = (_inner_contiguous(t) for t in (x, dt, A, B, C, z, dt_proj_weight))
    rank = w.shape[1] if w is not None else 0
    D, dt_bias = (t if t is None else t.contiguous() for t in (D, dt_bias))
    work = state if state.stride(-1) == 1 else state.contiguous()  # updated in place
    out = torch.empty(batch, dim, device=x.device, dtype=x.dtype)
    block_d, block_n, warps = _blocks(n)
    if n <= 32:
        # Many rows (large batch): widen the channel block while the grid keeps >= 512
        # programs. Measured on an H100 (d 1536, n 16, inside a CUDA graph): batch 64
        # 7.3 -> 5.7 us (fp32 state) / 4.8 us (fp16) with 128 channels; batch 1 is
        # fastest at the default 32 (2.3 us).
        while block_d < 128 and triton.cdiv(dim, 2 * block_d) * batch >= 512:
            block_d *= 2
    if BLOCK_OVERRIDE is not None:
        block_d, warps = BLOCK_OVERRIDE
    _ss_step_kernel[(triton.cdiv(dim, block_d), batch)](
        work, x, dt, A, B, C, D if D is not None else A, z if z is not None else x,
        dt_bias if dt_bias is not None else A, w if w is not None else A, out, dim, n, rank,
        work.stride(0), work.stride(1), x.stride(0), dt.stride(0), A.stride(0), B.stride(0),
        C.stride(0), z.stride(0) if z is not None else 0, w.stride(0) if w is not None else 0,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus), HAS_D=D is not None,
        HAS_Z=z is not None, A_IS_LOG=bool(A_is_log), DT_PROJ=w is not None,
        BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_R=triton.next_power_of_2(max(rank, 1)),
        num_warps=warps)
    if work is not state:
        state.copy_(work)
    return out
