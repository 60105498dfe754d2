"""Backend selection shared by every public op.

Each op lives in its own folder with up to three implementations:
``reference`` (plain, sequential: the oracle), ``torch`` (fast pure PyTorch) and
``triton`` (GPU kernels). The public function takes ``backend=`` and calls
:func:`resolve_backend` to turn ``"auto"`` into a concrete choice.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("auto", "reference", "torch", "triton")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    """True when Triton kernels run on the CPU through ``TRITON_INTERPRET=1``."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, x: torch.Tensor, has_triton_kernel: bool = True) -> str:
    """Turn ``backend`` into one of ``"reference" | "torch" | "triton"``.

    ``"auto"`` picks Triton for CUDA tensors when Triton is installed and the op has a
    kernel, else the pure-PyTorch path. Asking for ``"triton"`` where it cannot run is an
    error, never a silent fallback.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if x.is_cuda and has_triton_kernel and triton_available():
            return "triton"
        return "torch"
    if backend == "triton":
        if not has_triton_kernel:
            raise NotImplementedError("this op has no Triton kernel yet; use backend='torch'")
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
        if not x.is_cuda and not triton_interpret():
            raise RuntimeError(
                "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (slow; for testing)"
            )
    return backend


@functools.lru_cache(maxsize=None)
def has_kernel(op_package: str) -> bool:
    """True when the op package (e.g. ``mimetic.ops.ssd``) ships a ``triton`` module."""
    return triton_available() and importlib.util.find_spec(op_package + ".triton") is not None
