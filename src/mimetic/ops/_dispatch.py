"""Backend selection shared by every public op.

Each op lives in its own folder with up to three implementations:
``reference`` (plain, sequential: the oracle), ``torch`` (fast pure PyTorch) and
``triton`` (GPU kernels). The public function takes ``backend=`` and calls
:func:`resolve_backend` to turn ``"auto"`` into a concrete choice, then (for the scans)
either the ``torch.library`` op of ``_library.py`` while torch.compile traces
(:func:`compiling`), or the backend itself (:func:`backend_function`) through
:func:`call_eager`, which keeps autocast out of it.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from typing import Callable

import torch

BACKENDS = ("auto", "reference", "torch", "triton")


# assume_constant_result: torch.compile calls these while tracing and keeps the answer
# as a constant, instead of tracing into the cache wrapper and importlib (which breaks
# the graph).
@torch.compiler.assume_constant_result
def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    return _triton_available()


@functools.lru_cache(maxsize=None)
def _triton_available() -> bool:
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
        # has_kernel is False without triton too: ask for the package first, not a kernel
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
        if not has_triton_kernel:
            raise NotImplementedError("this op has no Triton kernel yet; use backend='torch'")
        if not x.is_cuda and not triton_interpret():
            raise RuntimeError(
                "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (slow; for testing)"
            )
    return backend


@torch.compiler.assume_constant_result
def has_kernel(op_package: str) -> bool:
    """True when the op package (e.g. ``mimetic.ops.ssd``) ships a ``triton`` module."""
    return _has_kernel(op_package)


@functools.lru_cache(maxsize=None)
def _has_kernel(op_package: str) -> bool:
    return _triton_available() and importlib.util.find_spec(op_package + ".triton") is not None


# Module and function name of each backend, by op folder.
_FUNCTION_NAMES = {"selective_scan": "selective_scan", "ssd": "ssd_scan",
                   "causal_conv1d": "causal_conv1d"}
_SUFFIX = {"reference": "ref", "torch": "torch", "triton": "triton"}


@functools.lru_cache(maxsize=None)
def backend_function(op: str, choice: str) -> Callable:
    """The implementation of op folder ``op`` (e.g. ``"ssd"``) for the resolved backend
    ``choice``, e.g. ``mimetic.ops.ssd.torch.ssd_scan_torch`` (imported on first use)."""
    module = importlib.import_module(f"mimetic.ops.{op}.{'reference' if choice == 'reference' else choice}")
    return getattr(module, f"{_FUNCTION_NAMES[op]}_{_SUFFIX[choice]}")


def compiling() -> bool:
    """True while torch.compile (dynamo) traces: the public ops then call their
    ``torch.library`` custom op (see ``_library.py``) instead of the backend."""
    return torch.compiler.is_compiling()


def call_eager(run: Callable, device_type: str, tensors: tuple):
    """``run(*tensors)`` (a backend call) with autocast off, forward and backward.

    The scans compute in float32 internally and return the input dtype; autocast left on
    would run their matmuls in bf16/fp16 (and the CPU path's worker threads, which do not
    inherit autocast, in float32: an inconsistent mix). Turning it off around the call
    covers the forward; a backward run inside the autocast region (as ``loss.backward()``
    often is) would still reach the backends' backward ops with autocast on, so then the
    call goes through :class:`_WithoutAutocast`. Without autocast: a plain call.
    """
    if not torch.is_autocast_enabled(device_type):
        return run(*tensors)
    with torch.autocast(device_type, enabled=False):
        if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors):
            return run(*tensors)
    outs = _WithoutAutocast.apply(run, device_type, *tensors)
    return outs[0] if len(outs) == 1 else outs


class _WithoutAutocast(torch.autograd.Function):
    """Runs ``run(*tensors)`` on detached leaves, keeping its autograd graph, and
    differentiates that graph in backward, both with autocast off. No recompute."""

    @staticmethod
    def forward(ctx, run, device_type, *tensors):
        with torch.enable_grad(), torch.autocast(device_type, enabled=False):
            leaves = [None if t is None else t.detach().requires_grad_(t.requires_grad)
                      for t in tensors]
            outs = run(*leaves)
        outs = outs if isinstance(outs, tuple) else (outs,)
        ctx.leaves, ctx.outs, ctx.device_type = leaves, outs, device_type
        return tuple(o.detach() for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        wanted = [i for i, leaf in enumerate(ctx.leaves) if leaf is not None and leaf.requires_grad]
        pairs = [(o, g) for o, g in zip(ctx.outs, grads) if g is not None and o.requires_grad]
        result = [None] * len(ctx.leaves)
        if wanted and pairs:
            with torch.autocast(ctx.device_type, enabled=False):
                got = torch.autograd.grad([o for o, _ in pairs], [ctx.leaves[i] for i in wanted],
                                          [g for _, g in pairs], allow_unused=True)
            for i, g in zip(wanted, got):
                result[i] = g
        return (None, None, *result)
