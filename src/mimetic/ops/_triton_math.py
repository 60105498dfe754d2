"""Triton math shared by the kernels of several ops (imported only by Triton modules)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _softplus(x):
    """log(1 + e^x) in float32, the one formula of every scan and decoding-step kernel (so a
    step and a scan discretize alike): no overflow, and for tiny e = e^-|x| (where 1 + e
    rounds to 1) log(1 + e) ~ e - e^2/2, the next term being below float32 resolution."""
    e = tl.exp(-tl.abs(x))
    return tl.maximum(x, 0.0) + tl.where(e < 1e-3, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
