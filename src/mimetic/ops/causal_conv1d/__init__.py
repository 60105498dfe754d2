"""Causal depthwise conv1d (+ optional SiLU) and its single-step update for decoding."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._checks import check_float, check_same_device, check_shape
from .._dispatch import has_kernel, resolve_backend
from .reference import causal_conv1d_ref
from .step import causal_conv1d_update

if TYPE_CHECKING:
    import torch

# Note: this package has a submodule named `torch` (the pure-PyTorch path); importing it
# rebinds the name `torch` in this namespace, so this file never uses the torch library
# at run time (annotations only).

__all__ = ["causal_conv1d", "causal_conv1d_update", "causal_conv1d_ref"]

ACTIVATIONS = (None, "silu", "swish")


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
        x: (batch, dim, L). weight: (dim, width). bias: (dim,).
        activation: None, "silu" or "swish" (the same).
        initial_states: (batch, dim, width-1), the inputs before step 0 (zeros if None).

    Returns:
        out (batch, dim, L); with ``return_final_states`` also (batch, dim, width-1),
        the conv state to continue decoding from.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    for name, t in dict(x=x, weight=weight, bias=bias, initial_states=initial_states).items():
        check_float(name, t)
    check_same_device(x=x, weight=weight, bias=bias, initial_states=initial_states)
    if x.dim() != 3:
        raise ValueError(f"x must have shape (batch, dim, length), got {tuple(x.shape)}")
    batch, dim, _ = x.shape
    check_shape("weight", weight, (dim, None))
    check_shape("bias", bias, (dim,))
    check_shape("initial_states", initial_states, (batch, dim, weight.shape[1] - 1))
    kwargs = dict(bias=bias, activation=activation, initial_states=initial_states,
                  return_final_states=return_final_states)
    choice = resolve_backend(backend, x, has_triton_kernel=has_kernel(__name__))
    if choice == "reference":
        return causal_conv1d_ref(x, weight, **kwargs)
    if choice == "triton":
        from .triton import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, **kwargs)
    from .torch import causal_conv1d_torch

    return causal_conv1d_torch(x, weight, **kwargs)
