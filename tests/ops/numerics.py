"""Helpers shared by the op tests: the error measure, and where Triton kernels can run."""
from __future__ import annotations

import os

import pytest
import torch


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64 on the CPU; fails on a shape mismatch or any
    non-finite value (NaN never passes)."""
    assert got.shape == ref.shape, f"shape {tuple(got.shape)} != {tuple(ref.shape)}"
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(got).all(), "non-finite values"
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def triton_device() -> str:
    """The device the Triton tests run on: "cuda" when there is a GPU, else "cpu" through
    the Triton interpreter (``TRITON_INTERPRET=1`` in pytest's environment); otherwise
    the calling test module is skipped."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)
