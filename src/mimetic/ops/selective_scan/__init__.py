"""Mamba-1 selective scan and its decoding step: the public ops and their backend tables.

Backends of the scan (``BACKENDS``): ``reference.py`` (sequential, the oracle),
``chunked.py`` (pure PyTorch, chunks of steps with a hand-written backward),
``triton.py`` (fused kernels) and, opt-in, ``cuda.py`` (CUDA C++ compiled at run time).
Of the step (``STEP_BACKENDS``): ``step.py`` (PyTorch)
and ``step_triton.py`` (one fused kernel, no backward).
"""
from __future__ import annotations

import torch

from ..._validate import bool_arg
from .. import _library
from .._checks import check_shape, check_tensors
from .._dispatch import call_eager, compiling, lazy, resolve_backend, resolve_step_backend
from .chunked import selective_scan_torch
from .reference import selective_scan_ref
from .step import selective_state_update_torch

__all__ = ["selective_scan", "selective_scan_ref", "selective_state_update"]


BACKENDS = {
    "reference": selective_scan_ref,
    "torch": selective_scan_torch,
    "triton": lazy(f"{__name__}.triton", "selective_scan_triton"),
    "cuda": lazy(f"{__name__}.cuda", "selective_scan_cuda"),  # compiles its kernels on first use
}
STEP_BACKENDS = {
    "torch": selective_state_update_torch,
    "triton": lazy(f"{__name__}.step_triton", "selective_state_update_triton"),
}


# Below this many (batch x dim) rows, a forward without gradient is faster on the Triton
# scan (fewer rows, longer sequences: its segment forward splits L more finely); at and
# above it, and for every forward + backward, the CUDA kernels are (benchmarks/RESULTS.md,
# "CUDA selective scan").
AUTO_CUDA_MIN_ROWS = 4096


def auto_backend(u: torch.Tensor, tensors: tuple) -> str:
    """What ``backend="auto"`` runs for these inputs: on CUDA tensors "cuda" when a
    gradient is wanted or ``batch * dim >= AUTO_CUDA_MIN_ROWS``, else "triton"; "torch" on
    the CPU or without Triton (as :func:`resolve_backend`); the same under torch.compile."""
    fallback = resolve_backend("auto", u)
    if not u.is_cuda or u.dtype == torch.float64:
        return fallback
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if need_grad or u.shape[0] * u.shape[1] >= AUTO_CUDA_MIN_ROWS:
        return "cuda"
    return fallback


def _validate(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    check_tensors(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
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
        u: input (b, d, L).
        delta: time steps before bias/softplus (b, d, L).
        A: state matrix (d, n), real and normally negative.
        B, C: input/output projections (b, n, L) or (b, g, n, L).
        D: skip (d,). z: gate (b, d, L), applied as ``out * silu(z)``.
        delta_bias: (d,) added to delta before the softplus.
        initial_state: (b, d, n) state before step 0 (zeros if None).
        backend: "auto", "reference", "torch", "triton" or "cuda" (run-time compiled
            CUDA kernels, ``cuda.py``, under torch.compile as well; Triton where they
            cannot run, with one warning). "auto" on CUDA tensors: "cuda" when a gradient
            is wanted or the scan has more than ``AUTO_CUDA_MIN_ROWS`` (batch x dim) rows,
            else Triton (see :func:`auto_backend`); on the CPU "torch".

    Returns:
        out (b, d, L) in u's dtype; with ``return_last_state`` also the final state
        (b, d, n) in float32 (float64 for float64 inputs).

    Under ``torch.autocast`` the scan still computes in float32 (autocast is turned off
    inside); under ``torch.compile`` it is one ``torch.ops.mimetic.selective_scan`` node.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias, initial_state)
    bool_arg("selective_scan", "delta_softplus", delta_softplus)  # "no" would be taken as true
    bool_arg("selective_scan", "return_last_state", return_last_state)
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    choice = "cuda" if backend == "cuda" else auto_backend(u, tensors) if backend == "auto" \
        else resolve_backend(backend, u)
    if compiling():  # one opaque op in the graph
        return _library.selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                       delta_softplus, return_last_state, choice)
    fn = BACKENDS[choice]

    def run(u, delta, A, B, C, D, z, delta_bias, initial_state):
        return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                  delta_softplus=delta_softplus, return_last_state=return_last_state,
                  initial_state=initial_state)

    return call_eager(run, u.device.type, tensors)


def _validate_step(state, x, dt, A, B, C, D, z, dt_bias, dt_proj_weight) -> None:
    check_tensors(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                  dt_proj_weight=dt_proj_weight)
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
    check_shape("B", B, (batch, n))
    check_shape("C", C, (batch, n))
    check_shape("D", D, (dim,))
    check_shape("dt_bias", dt_bias, (dim,))


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
        state: (b, d, n), float32 or the model's dtype. x, dt, z: (b, d).
            A: (d, n). B, C: (b, n). D, dt_bias: (d,).
        dt_softplus: softplus(dt + dt_bias).
        A_is_log: A holds a layer's ``A_log`` and the step uses ``-exp(A_log)``, as the
            Mamba layer does (saves forming A, two kernel launches, per step).
        dt_proj_weight: (d, rank): dt is then the low-rank (b, rank) input of the
            layer's dt projection, and the step forms ``dt @ dt_proj_weight.T`` itself
            (saves a matmul launch per step).
        backend: "auto" (the Triton kernel for CUDA tensors when triton is installed,
            else PyTorch), "torch" (or "reference": the same PyTorch code) or "triton"
            (an error on CPU tensors unless ``TRITON_INTERPRET=1``).

    Returns:
        y (b, d) in x's dtype. The Triton kernel has no autograd: "auto" takes the
        PyTorch path when a gradient is wanted, and so does float64 (kernel is float32).
    """
    _validate_step(state, x, dt, A, B, C, D, z, dt_bias, dt_proj_weight)
    bool_arg("selective_state_update", "dt_softplus", dt_softplus)
    bool_arg("selective_state_update", "A_is_log", A_is_log)
    args = (state, x, dt, A, B, C, D, z, dt_bias)
    choice = resolve_step_backend(backend, x, args + (dt_proj_weight,))
    return STEP_BACKENDS[choice](*args, dt_softplus=dt_softplus, A_is_log=A_is_log,
                                 dt_proj_weight=dt_proj_weight)
