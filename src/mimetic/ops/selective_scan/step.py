"""One decoding step of the Mamba-1 recurrence, updating the state in place.

:func:`selective_state_update` is the public op: it picks the fused Triton kernel
(``step_triton.py``) for CUDA tensors and the PyTorch version below otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_float, check_same_device, check_shape
from .._dispatch import resolve_backend, triton_available
from .._time_step import process_dt


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    A_is_log: bool = False,
    dt_proj_weight: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """One step of the selective scan for decoding; ``state`` is updated in place.

    Args:
        state: (batch, dim, n), float32 or the model's dtype. x, dt, z: (batch, dim).
            A: (dim, n). B, C: (batch, n). D, dt_bias: (dim,).
        dt_softplus: softplus(dt + dt_bias).
        A_is_log: A holds a layer's ``A_log`` and the step uses ``-exp(A_log)``, as the
            Mamba layer does (saves forming A, two kernel launches, per step).
        dt_proj_weight: (dim, rank): dt is then the low-rank (batch, rank) input of the
            layer's dt projection, and the step forms ``dt @ dt_proj_weight.T`` itself
            (saves a matmul launch per step).
        backend: "auto" (the Triton kernel for CUDA tensors when triton is installed,
            else PyTorch), "torch" (or "reference": the same PyTorch code) or "triton"
            (an error on CPU tensors unless ``TRITON_INTERPRET=1``).

    Returns:
        y (batch, dim) in x's dtype. The Triton kernel has no autograd: "auto" takes the
        PyTorch path when a gradient is wanted, and so does float64 (kernel is float32).
    """
    _validate(state, x, dt, A, B, C, D, z, dt_bias, dt_proj_weight)
    args = (state, x, dt, A, B, C, D, z, dt_bias)
    kwargs = dict(dt_softplus=dt_softplus, A_is_log=A_is_log, dt_proj_weight=dt_proj_weight)
    choice = resolve_backend(backend, x, has_triton_kernel=triton_available())
    if choice == "triton" and triton_step_ok(backend, args + (dt_proj_weight,)):
        from .step_triton import selective_state_update_triton

        return selective_state_update_triton(*args, **kwargs)
    return selective_state_update_torch(*args, **kwargs)


def triton_step_ok(backend: str, tensors: tuple) -> bool:
    """Whether a resolved "triton" choice may run the kernel (shared by both step ops):
    False (use PyTorch) for float64 inputs, and for "auto" when a gradient is wanted;
    an explicit ``backend="triton"`` that would have to drop the gradient is an error."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        if backend == "triton":
            raise RuntimeError("the Triton decoding step has no backward; run it under "
                               "torch.no_grad() or use backend='torch'")
        return False
    return True


def _validate(state, x, dt, A, B, C, D, z, dt_bias, dt_proj_weight) -> None:
    named = dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                 dt_proj_weight=dt_proj_weight)
    for name, t in named.items():
        check_float(name, t)
    check_same_device(**named)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (batch, dim), got {tuple(x.shape)}")
    batch, dim = x.shape
    check_shape("A", A, (dim, None))
    n = A.shape[1]
    check_shape("state", state, (batch, dim, n))
    if dt_proj_weight is not None:
        check_shape("dt_proj_weight", dt_proj_weight, (dim, None))
        check_shape("dt", dt, (batch, dt_proj_weight.shape[1]))
    else:
        check_shape("dt", dt, (batch, dim))
    check_shape("z", z, (batch, dim))
    for name in ("B", "C"):
        check_shape(name, named[name], (batch, n))
    for name in ("D", "dt_bias"):
        check_shape(name, named[name], (dim,))


def selective_state_update_torch(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    A_is_log: bool = False,
    dt_proj_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """PyTorch step: state (batch, dim, n) updated in place; x, dt, z (batch, dim); A (dim, n);
    B, C (batch, n); D, dt_bias (dim,). Returns y (batch, dim) in x's dtype. ``A_is_log``
    and ``dt_proj_weight`` as in :func:`selective_state_update`."""
    if dt_proj_weight is not None:
        dt = dt.float() @ dt_proj_weight.float().t()
    if A_is_log:
        A = -torch.exp(A.float())
    dt = process_dt(dt, dt_bias, dt_softplus)
    dA = torch.exp(dt.unsqueeze(-1) * A.float())  # (batch, dim, n)
    dBx = (dt * x.float()).unsqueeze(-1) * B.float().unsqueeze(1)
    new_state = state.float() * dA + dBx
    state.copy_(new_state)
    y = (new_state * C.float().unsqueeze(1)).sum(-1)
    if D is not None:
        y = y + x.float() * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)
