"""Causal depthwise conv1d (+ optional SiLU) and its decoding step: the public ops and
their backend tables.

Backends of the conv (``BACKENDS``): ``reference.py`` (a sum of W shifted products, the oracle),
``shifted.py`` (pure PyTorch: W shifted multiply-adds in the input's own layout),
``triton.py`` and, opt-in, ``cuda.py`` (CUDA C++ compiled at run time). Of the step
(``STEP_BACKENDS``): ``step.py`` (PyTorch) and ``step_triton.py`` (one fused kernel, no backward).
"""
from __future__ import annotations

import torch

from ..._validate import bool_arg
from .._checks import check_shape, check_tensors
from .._dispatch import compiling, lazy, resolve_backend, resolve_step_backend
from .reference import causal_conv1d_ref
from .shifted import causal_conv1d_torch
from .step import causal_conv1d_update_torch

__all__ = ["causal_conv1d", "causal_conv1d_update", "causal_conv1d_ref"]

ACTIVATIONS = (None, "silu", "swish")


BACKENDS = {
    "reference": causal_conv1d_ref,
    "torch": causal_conv1d_torch,
    "triton": lazy(f"{__name__}.triton", "causal_conv1d_triton"),
    "cuda": lazy(f"{__name__}.cuda", "causal_conv1d_cuda"),  # compiles its kernels on first use
}
STEP_BACKENDS = {
    "torch": causal_conv1d_update_torch,
    "triton": lazy(f"{__name__}.step_triton", "causal_conv1d_update_triton"),
}


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    backend: str = "auto",
):
    """Causal depthwise convolution over time.

    Args:
        x: (b, d, L). weight: (d, width). bias: (d,).
        activation: None, "silu" or "swish" (the same).
        initial_states: (b, d, width-1), the inputs before step 0 (zeros if None).
        backend: "auto" (Triton on CUDA, else torch), "reference", "torch", "triton" or
            "cuda" (opt-in: run-time compiled CUDA kernels, ``cuda.py``; Triton where they
            cannot run, with a warning, and under torch.compile).

    Returns:
        out (b, d, L); with ``return_final_states`` also (b, d, width-1), the conv state
        to continue decoding from.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    check_tensors(x=x, weight=weight, bias=bias, initial_states=initial_states)
    if x.dim() != 3:
        raise ValueError(f"x must have shape (batch, dim, length), got {tuple(x.shape)}")
    batch, dim, _ = x.shape
    check_shape("weight", weight, (dim, None))
    _check_width(weight)
    check_shape("bias", bias, (dim,))
    check_shape("initial_states", initial_states, (batch, dim, weight.shape[1] - 1))
    bool_arg("causal_conv1d", "return_final_states", return_final_states)  # "no" would be taken as true
    if backend == "cuda":  # ctypes launches do not trace: the Triton conv under torch.compile
        choice = resolve_backend("triton", x) if compiling() else "cuda"
    else:
        choice = resolve_backend(backend, x)
    return BACKENDS[choice](
        x, weight, bias=bias, activation=activation, initial_states=initial_states,
        return_final_states=return_final_states)


def _check_width(weight: torch.Tensor) -> None:
    """A conv of width 0 has no taps (and a state of width -1): refused by name."""
    if weight.shape[1] < 1:
        raise ValueError(f"weight must have shape (dim, width) with width >= 1, got {tuple(weight.shape)}")


def _validate_step(x, conv_state, weight, bias, activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    check_tensors(x=x, conv_state=conv_state, weight=weight, bias=bias)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (batch, dim), got {tuple(x.shape)}")
    batch, dim = x.shape
    check_shape("weight", weight, (dim, None))
    _check_width(weight)
    check_shape("bias", bias, (dim,))
    check_shape("conv_state", conv_state, (batch, dim, weight.shape[1] - 1))


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """One step of the causal depthwise conv for decoding; ``conv_state`` is updated in place.

    Args:
        x: (b, d); may be a strided view (e.g. a slice of the in_proj output).
        conv_state: (b, d, width-1), the last width-1 inputs, shifted in place to
            end with x (stored in conv_state's dtype); any strides.
        weight: (d, width). bias: (d,). activation: None, "silu" or "swish".
        backend: "auto" (the Triton kernel for CUDA tensors when triton is installed,
            else PyTorch), "torch" (or "reference": the same PyTorch code) or "triton"
            (an error on CPU tensors unless ``TRITON_INTERPRET=1``).

    Returns:
        out (b, d) in x's dtype, computed in float32. The Triton kernel has no
        autograd: "auto" takes the PyTorch path when a gradient is wanted, and so does
        float64 (kernel is float32).
    """
    _validate_step(x, conv_state, weight, bias, activation)
    args = (x, conv_state, weight, bias)
    return STEP_BACKENDS[resolve_step_backend(backend, x, args)](*args, activation=activation)
