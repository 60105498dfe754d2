"""One decoding step of the Mamba-2 recurrence, updating the state in place.

:func:`ssd_state_update` is the public op: it picks the fused Triton kernel
(``step_triton.py``) for CUDA tensors and the PyTorch version below otherwise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import check_float, check_same_device, check_shape
from .._dispatch import resolve_backend, triton_available
from .._time_step import process_dt
from ..selective_scan.step import triton_step_ok


def ssd_state_update(
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
    dt_limit: tuple[float, float] = (0.0, math.inf),
    A_is_log: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """One step of the SSD recurrence for decoding; ``state`` is updated in place.

    Args:
        state: (batch, H, P, N), normally float32. x, z: (batch, H, P). dt: (batch, H).
        A, dt_bias: (H,). B, C: (batch, G, N), G groups of H / G heads each.
        D: (H,) or (H, P). dt' = clamp(softplus(dt + dt_bias), *dt_limit).
        A_is_log: A holds a layer's ``A_log`` and the step uses ``-exp(A_log)``, as the
            Mamba2 layer does (saves forming A, two kernel launches, per step).
        backend: "auto" (the Triton kernel for CUDA tensors when triton is installed,
            else PyTorch), "torch" (or "reference": the same PyTorch code) or "triton"
            (an error on CPU tensors unless ``TRITON_INTERPRET=1``).

    Returns:
        y (batch, H, P) in x's dtype. The Triton kernel has no autograd: "auto" takes the
        PyTorch path when a gradient is wanted, and so does float64 (kernel is float32).
    """
    _validate(state, x, dt, A, B, C, D, z, dt_bias)
    args = (state, x, dt, A, B, C, D, z, dt_bias)
    choice = resolve_backend(backend, x, has_triton_kernel=triton_available())
    if choice == "triton" and triton_step_ok(backend, args):
        from .step_triton import ssd_state_update_triton

        return ssd_state_update_triton(*args, dt_softplus=dt_softplus, dt_limit=dt_limit,
                                       A_is_log=A_is_log)
    return ssd_state_update_torch(*args, dt_softplus=dt_softplus, dt_limit=dt_limit,
                                  A_is_log=A_is_log)


def _validate(state, x, dt, A, B, C, D, z, dt_bias) -> None:
    named = dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    for name, t in named.items():
        check_float(name, t)
    check_same_device(**named)
    if x.dim() != 3:
        raise ValueError(f"x must have shape (batch, nheads, headdim), got {tuple(x.shape)}")
    batch, H, P = x.shape
    check_shape("dt", dt, (batch, H))
    check_shape("A", A, (H,))
    check_shape("B", B, (batch, None, None))
    G, N = B.shape[1], B.shape[2]
    check_shape("C", C, (batch, G, N))
    if H % G != 0:
        raise ValueError(f"ngroups={G} must divide nheads={H}")
    check_shape("D", D, (H, P) if D is not None and D.dim() == 2 else (H,))
    check_shape("z", z, (batch, H, P))
    check_shape("dt_bias", dt_bias, (H,))
    check_shape("state", state, (batch, H, P, N))


def ssd_state_update_torch(
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
    dt_limit: tuple[float, float] = (0.0, math.inf),
    A_is_log: bool = False,
) -> torch.Tensor:
    """PyTorch step: state (batch, H, P, N) updated in place; x, z (batch, H, P); dt (batch, H);
    A (H,); B, C (batch, G, N); D (H,) or (H, P); dt_bias (H,).
    Returns y (batch, H, P) in x's dtype. ``A_is_log`` as in :func:`ssd_state_update`."""
    H, G = x.shape[1], B.shape[1]
    if A_is_log:
        A = -torch.exp(A.float())
    dt = process_dt(dt, dt_bias, dt_softplus, dt_limit)
    Bh = B.float().repeat_interleave(H // G, dim=1)  # (batch, H, N)
    Ch = C.float().repeat_interleave(H // G, dim=1)
    dA = torch.exp(dt * A.float())  # (batch, H)
    new_state = state.float() * dA[:, :, None, None] + (dt[:, :, None] * x.float())[..., None] * Bh[:, :, None, :]
    state.copy_(new_state)
    y = torch.einsum("bhpn,bhn->bhp", new_state, Ch)
    if D is not None:
        Df = D.float()
        y = y + x.float() * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)
