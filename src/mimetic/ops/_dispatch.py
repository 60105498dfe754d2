"""Backend selection shared by every public op.

Each op folder has up to three implementations: ``reference`` (plain, sequential: the
oracle), ``torch`` (fast pure PyTorch, named after its method: ``chunked.py``,
``shifted.py``) and ``triton`` (GPU kernels). Its ``__init__.py`` lists them in one literal
table, ``BACKENDS`` (and ``STEP_BACKENDS`` for the decoding step), and the public function
turns ``backend=`` into a key of that table with :func:`resolve_backend` (the step ops
with :func:`resolve_step_backend`). The scans then call their ``torch.library`` op
(``_library.py``) while torch.compile traces (:func:`compiling`), else the backend through
:func:`call_eager`, which keeps autocast out of it.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable

import torch

BACKENDS = ("auto", "reference", "torch", "triton")


# assume_constant_result: torch.compile calls this while tracing and keeps the answer as
# a constant, instead of tracing into the cache wrapper and importlib (which breaks the
# graph).
@torch.compiler.assume_constant_result
def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    return _triton_available()


@functools.cache
def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    """True when Triton kernels run on the CPU through ``TRITON_INTERPRET=1``."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def lazy(module: str, name: str) -> Callable:
    """A stand-in for ``module.name`` (``module`` an absolute module name) that imports
    ``module`` on its first call: the backend tables list the Triton backends this way, so
    that importing an op does not import ``triton``. The attribute is looked up on every call
    (a test may replace it); ``sys.modules`` rather than ``importlib`` on the way, because
    torch.compile traces the one and not the other."""

    def call(*args, **kwargs):
        found = sys.modules.get(module)
        if found is None:
            found = importlib.import_module(module)
        return getattr(found, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


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
        # ask for the package first, then for a kernel
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package (pip install triton)")
        if not has_triton_kernel:
            raise NotImplementedError("this op has no Triton kernel yet; use backend='torch'")
        if not x.is_cuda and not triton_interpret():
            raise RuntimeError(
                "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (slow; for testing)"
            )
    return backend


def resolve_step_backend(backend: str, x: torch.Tensor, tensors: tuple) -> str:
    """Backend of a decoding-step op: ``"torch"`` or ``"triton"`` (``"reference"`` is the
    PyTorch step too). The step kernels have no backward and compute in float32, so a
    resolved ``"triton"`` falls back to PyTorch for float64 inputs and, under ``"auto"``,
    when a gradient is wanted; an explicit ``backend="triton"`` that would have to drop
    the gradient is an error."""
    choice = resolve_backend(backend, x, has_triton_kernel=triton_available())
    if choice != "triton":
        return "torch"
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return "torch"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        if backend == "triton":
            raise RuntimeError("the Triton decoding step has no backward; run it under "
                               "torch.no_grad() or use backend='torch'")
        return "torch"
    return "triton"


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
