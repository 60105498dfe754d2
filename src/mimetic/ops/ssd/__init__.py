"""Mamba-2 SSD scan and its decoding step: the public ops and their backend tables.

Backends of the scan (``BACKENDS``): ``reference.py`` (sequential, the oracle),
``chunked.py`` (pure PyTorch, the chunked algorithm through autograd) and ``triton.py``
(kernels with a hand-written backward). Of the step (``STEP_BACKENDS``): ``step.py``
(PyTorch) and ``step_triton.py`` (one fused kernel, no backward).
"""
from __future__ import annotations

import math

import torch

from ..._validate import bool_arg, int_arg, range_arg
from .. import _library
from .._checks import check_shape, check_tensors
from .._dispatch import call_eager, compiling, lazy, resolve_backend, resolve_step_backend
from .chunked import ssd_scan_torch
from .reference import ssd_scan_ref
from .step import ssd_state_update_torch

__all__ = ["ssd_scan", "ssd_scan_ref", "ssd_state_update"]


BACKENDS = {
    "reference": ssd_scan_ref,
    "torch": ssd_scan_torch,
    "triton": lazy(f"{__name__}.triton", "ssd_scan_triton"),
}
STEP_BACKENDS = {
    "torch": ssd_state_update_torch,
    "triton": lazy(f"{__name__}.step_triton", "ssd_state_update_triton"),
}


def _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states) -> None:
    check_tensors(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                  initial_states=initial_states)
    if x.dim() != 4:
        raise ValueError(f"x must have shape (batch, length, heads, headdim), got {tuple(x.shape)}")
    batch, L, H, P = x.shape
    check_shape("dt", dt, (batch, L, H))
    check_shape("A", A, (H,))
    check_shape("B", B, (batch, L, None, None))
    G, N = B.shape[2], B.shape[3]
    check_shape("C", C, (batch, L, G, N))
    if H % G != 0:
        raise ValueError(f"ngroups={G} must divide nheads={H}")
    if D is not None and D.dim() == 2:
        check_shape("D", D, (H, P))
    else:
        check_shape("D", D, (H,))
    check_shape("z", z, (batch, L, H, P))
    check_shape("dt_bias", dt_bias, (H,))
    check_shape("initial_states", initial_states, (batch, H, P, N))
    int_arg("ssd_scan", "chunk_size", chunk_size, minimum=1)


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    backend: str = "auto",
):
    """Mamba-2 SSD scan, same signature as ``mamba_ssm``'s ``mamba_chunk_scan_combined``.

    Args:
        x: input (b, L, h, p).
        dt: time steps before bias/softplus (b, L, h).
        A: per-head decay rate (h,), normally negative.
        B, C: (b, L, g, n); the h heads are split evenly across the g groups.
        chunk_size: chunk length of the chunked algorithm (changes only the rounding).
        D: skip (h,) or (h, p). z: gate (b, L, h, p).
        dt_bias: (h,); dt_limit: clamp applied after the softplus.
        initial_states: (b, h, p, n).
        backend: "auto" (Triton on CUDA, else torch), "reference", "torch" or "triton".

    Returns:
        y (b, L, h, p) in x's dtype; with ``return_final_states`` also the final states
        (b, h, p, n) in float32 (float64 for float64 inputs).

    Under ``torch.autocast`` the scan still computes in float32 (autocast is turned off
    inside); under ``torch.compile`` it is one ``torch.ops.mimetic.ssd_scan`` node.
    """
    _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states)
    range_arg("ssd_scan", "dt_limit", dt_limit, low=0, allow_inf_high=True, strict_low=False)
    bool_arg("ssd_scan", "dt_softplus", dt_softplus)  # "no" would be taken as true
    bool_arg("ssd_scan", "return_final_states", return_final_states)
    choice = resolve_backend(backend, x)
    if compiling():  # one opaque op in the graph
        return _library.ssd_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus,
                                 tuple(dt_limit), initial_states, return_final_states, choice)
    fn = BACKENDS[choice]

    def run(x, dt, A, B, C, D, z, dt_bias, initial_states):
        return fn(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                  dt_softplus=dt_softplus, dt_limit=tuple(dt_limit),
                  initial_states=initial_states, return_final_states=return_final_states)

    return call_eager(run, x.device.type, (x, dt, A, B, C, D, z, dt_bias, initial_states))


def _validate_step(state, x, dt, A, B, C, D, z, dt_bias) -> None:
    check_tensors(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
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
        state: (b, h, p, n), normally float32. x, z: (b, h, p). dt: (b, h).
        A, dt_bias: (h,). B, C: (b, g, n), g groups of h / g heads each.
        D: (h,) or (h, p). dt' = clamp(softplus(dt + dt_bias), *dt_limit).
        A_is_log: A holds a layer's ``A_log`` and the step uses ``-exp(A_log)``, as the
            Mamba2 layer does (saves forming A, two kernel launches, per step).
        backend: "auto" (the Triton kernel for CUDA tensors when triton is installed,
            else PyTorch), "torch" (or "reference": the same PyTorch code) or "triton"
            (an error on CPU tensors unless ``TRITON_INTERPRET=1``).

    Returns:
        y (b, h, p) in x's dtype. The Triton kernel has no autograd: "auto" takes the
        PyTorch path when a gradient is wanted, and so does float64 (kernel is float32).
    """
    _validate_step(state, x, dt, A, B, C, D, z, dt_bias)
    range_arg("ssd_state_update", "dt_limit", dt_limit, low=0, allow_inf_high=True, strict_low=False)
    bool_arg("ssd_state_update", "dt_softplus", dt_softplus)
    bool_arg("ssd_state_update", "A_is_log", A_is_log)
    args = (state, x, dt, A, B, C, D, z, dt_bias)
    choice = resolve_step_backend(backend, x, args)
    return STEP_BACKENDS[choice](*args, dt_softplus=dt_softplus, dt_limit=dt_limit,
                                 A_is_log=A_is_log)
