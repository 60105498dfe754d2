"""Triton math shared by the kernels of several ops (imported only by Triton modules)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _softplus(x):
    """log(1 + e^x) in float32, as the decoding-step kernels, the lane scan kernels and the
    SSD kernels compute it: no overflow, and for tiny e = e^-|x| (where 1 + e rounds to 1)
    log(1 + e) ~ e - e^2/2, the next term being below float32 resolution. The segment
    forward (``selective_scan/triton_segment.py``) uses its own ``_softplus_fast`` (one exp2
    and one log2 per element; within 3e-6 relative of this)."""
    e = tl.exp(-tl.abs(x))
    return tl.maximum(x, 0.0) + tl.where(e < 1e-3, e * (1.0 - 0.5 * e), tl.log(1.0 + e))
