"""Mamba-2 SSD scan: public entry point, dispatching to reference / torch / triton."""
from __future__ import annotations

import math

from typing import TYPE_CHECKING

from .. import _library
from .._checks import check_float, check_same_device, check_shape
from .._dispatch import backend_function, call_eager, compiling, has_kernel, resolve_backend
from .reference import ssd_scan_ref

if TYPE_CHECKING:
    import torch

# Note: this package has a submodule named `torch` (the pure-PyTorch path); importing it
# rebinds the name `torch` in this namespace, so this file never uses the torch library
# at run time (annotations only).

__all__ = ["ssd_scan", "ssd_scan_ref"]


def _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states) -> None:
    for name, t in dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                        initial_states=initial_states).items():
        check_float(name, t)
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
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
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")


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
        x: input (batch, L, nheads, headdim).
        dt: time steps before bias/softplus (batch, L, nheads).
        A: per-head decay rate (nheads,), normally negative.
        B, C: (batch, L, ngroups, d_state); heads are split evenly across groups.
        chunk_size: chunk length of the chunked algorithm.
        D: skip (nheads,) or (nheads, headdim). z: gate (batch, L, nheads, headdim).
        dt_bias: (nheads,); dt_limit: clamp applied after the softplus.
        initial_states: (batch, nheads, headdim, d_state).
        backend: "auto" (Triton on CUDA, else torch), "reference", "torch" or "triton".

    Returns:
        y (batch, L, nheads, headdim) in x's dtype; with ``return_final_states`` also
        the final states (batch, nheads, headdim, d_state) in float32.

    Under ``torch.autocast`` the scan still computes in float32 (autocast is turned off
    inside); under ``torch.compile`` it is one ``torch.ops.mimetic.ssd_scan`` node.
    """
    _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states)
    choice = resolve_backend(backend, x, has_triton_kernel=has_kernel(__name__))
    if compiling():  # one opaque op in the graph; eager skips its recompute in backward
        return _library.ssd_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus,
                                 tuple(dt_limit), initial_states, return_final_states, choice)
    fn = backend_function("ssd", choice)

    def run(x, dt, A, B, C, D, z, dt_bias, initial_states):
        return fn(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                  dt_softplus=dt_softplus, dt_limit=tuple(dt_limit),
                  initial_states=initial_states, return_final_states=return_final_states)

    return call_eager(run, x.device.type, (x, dt, A, B, C, D, z, dt_bias, initial_states))
