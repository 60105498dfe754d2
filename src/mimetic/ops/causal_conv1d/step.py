"""One decoding step of the causal depthwise conv, updating its state in place.

:func:`causal_conv1d_update` is the public op: it picks the fused Triton kernel
(``step_triton.py``, one launch) for CUDA tensors and the PyTorch version below otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_float, check_same_device, check_shape
from .._dispatch import resolve_backend, triton_available
from ..selective_scan.step import triton_step_ok


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
        x: (batch, dim); may be a strided view (e.g. a slice of the in_proj output).
        conv_state: (batch, dim, width-1), the last width-1 inputs, shifted in place to
            end with x (stored in conv_state's dtype); any strides.
        weight: (dim, width). bias: (dim,). activation: None, "silu" or "swish".
        backend: "auto" (the Triton kernel for CUDA tensors when triton is installed,
            else PyTorch), "torch" (or "reference": the same PyTorch code) or "triton"
            (an error on CPU tensors unless ``TRITON_INTERPRET=1``).

    Returns:
        out (batch, dim) in x's dtype, computed in float32. The Triton kernel has no
        autograd: "auto" takes the PyTorch path when a gradient is wanted, and so does
        float64 (kernel is float32).
    """
    _validate(x, conv_state, weight, bias, activation)
    args = (x, conv_state, weight, bias)
    choice = resolve_backend(backend, x, has_triton_kernel=triton_available())
    if choice == "triton" and triton_step_ok(backend, args):
        from .step_triton import causal_conv1d_update_triton

        return causal_conv1d_update_triton(*args, activation=activation)
    return causal_conv1d_update_torch(*args, activation=activation)


def _validate(x, conv_state, weight, bias, activation) -> None:
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    named = dict(x=x, conv_state=conv_state, weight=weight, bias=bias)
    for name, t in named.items():
        check_float(name, t)
    check_same_device(**named)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (batch, dim), got {tuple(x.shape)}")
    batch, dim = x.shape
    check_shape("weight", weight, (dim, None))
    check_shape("bias", bias, (dim,))
    check_shape("conv_state", conv_state, (batch, dim, weight.shape[1] - 1))


def causal_conv1d_update_torch(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """PyTorch step: x (batch, dim); conv_state (batch, dim, width-1), the last width-1
    inputs, shifted in place to include x; weight (dim, width); bias (dim,).
    Returns out (batch, dim) in x's dtype."""
    window = torch.cat([conv_state, x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)  # (b, d, W)
    out = (window.float() * weight.float()).sum(-1)
    if bias is not None:
        out = out + bias.float()
    conv_state.copy_(window[:, :, 1:])
    if activation in ("silu", "swish"):
        out = F.silu(out)
    return out.to(x.dtype)
