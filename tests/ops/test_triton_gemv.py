"""Triton ``gemv`` (the projections of a decoding step) vs ``F.linear`` in float64:
rows 1-8, odd sizes, bias or not, fp32 / bf16 / fp16, strided and 3-D inputs, and the
dispatch rules (gradients, too many rows).

Runs on CUDA when present, else through the Triton interpreter (``TRITON_INTERPRET=1``
in the environment of the pytest process).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from numerics import rel_err, triton_device

DEVICE = triton_device()  # skips this module where Triton cannot run

from mimetic.ops.gemv import gemv  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Against float64 on the same rounded inputs: float32 accumulation, one output rounding.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
SHAPES = [(1, 37, 5), (3, 100, 70), (8, 64, 300)]  # (rows, N, K)
if DEVICE == "cuda":
    SHAPES += [(1, 3352, 768), (4, 768, 1536), (8, 80, 1536)]  # the decoding model's


@pytest.mark.parametrize("rows,N,K", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("use_bias", [False, True], ids=["nobias", "bias"])
def test_gemv_matches_linear(rows, N, K, dtype, use_bias):
    g = torch.Generator().manual_seed(rows * N + K)
    x = torch.randn(rows, K, generator=g).to(DEVICE, dtype)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(DEVICE, dtype)
    b = torch.randn(N, generator=g).to(DEVICE, dtype) if use_bias else None
    y = gemv(x, w, b, backend="triton")
    ref = F.linear(x.double(), w.double(), b.double() if b is not None else None)
    assert y.dtype == dtype and y.shape == (rows, N)
    assert rel_err(y, ref) < TOL[dtype]


def test_gemv_strided_and_batched_inputs():
    """A column slice of a wider tensor, and (batch, 1, K) as the layers' steps pass."""
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(3, 50, generator=g).to(DEVICE)
    w = torch.randn(20, 30, generator=g).to(DEVICE)
    x = wide[:, 10:40]
    assert not x.is_contiguous()
    torch.testing.assert_close(gemv(x, w, backend="triton"), F.linear(x, w), rtol=1e-5, atol=1e-5)
    x3 = torch.randn(4, 1, 30, generator=g).to(DEVICE)
    y3 = gemv(x3, w, backend="triton")
    assert y3.shape == (4, 1, 20)
    torch.testing.assert_close(y3, F.linear(x3, w), rtol=1e-5, atol=1e-5)


def test_gemv_dispatch_rules():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 5, generator=g).to(DEVICE)
    many = torch.randn(9, 5, generator=g).to(DEVICE)
    torch.testing.assert_close(gemv(many, w), F.linear(many, w))  # auto: too many rows
    with pytest.raises(RuntimeError, match="at most"):
        gemv(many, w, backend="triton")
    x = torch.randn(2, 5, generator=g).to(DEVICE).requires_grad_(True)
    y = gemv(x, w)  # auto falls back to F.linear when a gradient is wanted
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="no gradient"):
        gemv(x, w, backend="triton")
    with pytest.raises(ValueError, match="share K"):
        gemv(torch.randn(2, 4).to(DEVICE), w)
    with pytest.raises(ValueError, match="bias"):
        gemv(x.detach(), w, torch.zeros(5).to(DEVICE))
