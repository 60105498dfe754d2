"""The elementwise accuracy bound both emulated-kernel test files hold a result to (their
module docstrings say why these numbers):

    |got - ref| <= r |ref| + s + FP32_TOL (|ref| + rms(ref))

with r the half-ulp bound of the result's dtype (:data:`HALF_ULP`: 16-bit results are
rounded once, at the end, from float32) and s half the smallest subnormal step (16-bit
only)."""
from __future__ import annotations

import torch

HALF_ULP = {torch.float32: 0.0, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
FP32_TOL = 1e-5


def assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> float:
    """Asserts ``got`` (in ``dtype``, all finite) within the bound of ``ref`` (float64)
    everywhere; returns the worst fraction of the bound used (0 for empty tensors)."""
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
    got, ref = got.detach().double(), ref.detach().double()
    bad = ~torch.isfinite(got)
    assert not bad.any(), f"{name}: {int(bad.sum())} non-finite values (unwritten output, unset memory or a " \
                          f"read outside the view), first at {tuple(bad.nonzero()[0].tolist())}"
    rounding = HALF_ULP[dtype] * ref.abs()
    if dtype != torch.float32:      # and half the smallest subnormal step, where rounding is absolute
        rounding = rounding + torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps / 2
    bound = rounding + FP32_TOL * (ref.abs() + ref.pow(2).mean().sqrt().clamp_min(1e-30))
    ratio = (got - ref).abs() / bound
    if not ratio.numel():
        return 0.0
    worst = ratio.max().item()
    where = tuple(int(i) for i in torch.unravel_index(ratio.argmax(), ratio.shape))
    assert worst <= 1, (f"{name}: |got - ref| is {worst:.3g} times the tolerance at {where} "
                        f"(got {got[where].item():.6g}, ref {ref[where].item():.6g})")
    return worst
