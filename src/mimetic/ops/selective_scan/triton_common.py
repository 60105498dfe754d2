"""Triton helpers shared by the selective-scan kernels (see ``triton.py``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .._triton_math import _softplus

# ----------------------------------------------------------------------------- helpers

@triton.jit
def _affine_fwd(a1, b1, a2, b2):
    # Compose x -> a1 x + b1 (earlier step) then x -> a2 x + b2 (later step).
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _row_offsets(pid_b, offs_d, s_b, s_d):
    """(BLOCK_D, 1) int64 offsets of the rows (batch pid_b, channels offs_d) of a
    (batch, dim, L) tensor with strides (s_b, s_d, 1): any batch / channel layout, time
    contiguous. Each tensor gets its own, so strided views need no copy."""
    return pid_b * s_b + offs_d[:, None].to(tl.int64) * s_d


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
