"""Mamba-1 selective scan: public entry point, dispatching to reference / torch / triton."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _library
from .._checks import check_float, check_same_device, check_shape
from .._dispatch import backend_function, call_eager, compiling, has_kernel, resolve_backend
from .reference import selective_scan_ref

if TYPE_CHECKING:
    import torch

# Note: this package has a submodule named `torch` (the pure-PyTorch path); importing it
# rebinds the name `torch` in this namespace, so this file never uses the torch library
# at run time (annotations only).

__all__ = ["selective_scan", "selective_scan_ref"]


def _validate(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    for name, t in dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                        initial_state=initial_state).items():
        check_float(name, t)
    check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                      initial_state=initial_state)
    if u.dim() != 3:
        raise ValueError(f"u must have shape (batch, dim, length), got {tuple(u.shape)}")
    batch, dim, L = u.shape
    check_shape("delta", delta, (batch, dim, L))
    if A.is_complex():
        raise TypeError("complex A is not supported; A must be real (dim, d_state)")
    check_shape("A", A, (dim, None))
    n = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        if M.dim() == 3:
            check_shape(name, M, (batch, n, L))
        elif M.dim() == 4:
            check_shape(name, M, (batch, None, n, L))
            if dim % M.shape[1] != 0:
                raise ValueError(f"{name} has {M.shape[1]} groups, which must divide dim={dim}")
        else:
            raise ValueError(f"{name} must be (batch, d_state, L) or (batch, groups, d_state, L), "
                             f"got {tuple(M.shape)}")
    if B.shape[:-2] != C.shape[:-2]:
        raise ValueError(f"B and C must both be ungrouped or have the same number of groups, "
                         f"got B {tuple(B.shape)} and C {tuple(C.shape)}")
    check_shape("D", D, (dim,))
    check_shape("z", z, (batch, dim, L))
    check_shape("delta_bias", delta_bias, (dim,))
    check_shape("initial_state", initial_state, (batch, dim, n))


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
    backend: str = "auto",
):
    """Mamba-1 selective scan (S6), same signature as ``mamba_ssm``'s ``selective_scan_fn``.

    Args:
        u: input (batch, dim, L).
        delta: time steps before bias/softplus (batch, dim, L).
        A: state matrix (dim, d_state), real and normally negative.
        B, C: input/output projections (batch, d_state, L) or (batch, groups, d_state, L).
        D: skip (dim,). z: gate (batch, dim, L), applied as ``out * silu(z)``.
        delta_bias: (dim,) added to delta before the softplus.
        initial_state: (batch, dim, d_state) state before step 0 (zeros if None).
        backend: "auto" (Triton on CUDA, else torch), "reference", "torch" or "triton".

    Returns:
        out (batch, dim, L) in u's dtype; with ``return_last_state`` also the final state
        (batch, dim, d_state) in float32.

    Under ``torch.autocast`` the scan still computes in float32 (autocast is turned off
    inside); under ``torch.compile`` it is one ``torch.ops.mimetic.selective_scan`` node.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias, initial_state)
    choice = resolve_backend(backend, u, has_triton_kernel=has_kernel(__name__))
    if compiling():  # one opaque op in the graph; eager skips its recompute in backward
        return _library.selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                       delta_softplus, return_last_state, choice)
    fn = backend_function("selective_scan", choice)

    def run(u, delta, A, B, C, D, z, delta_bias, initial_state):
        return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                  delta_softplus=delta_softplus, return_last_state=return_last_state,
                  initial_state=initial_state)

    return call_eager(run, u.device.type, (u, delta, A, B, C, D, z, delta_bias, initial_state))
