"""Helpers shared by the op tests: the error measure, where each backend runs, random
inputs, and forward + backward on leaf copies.

The op modules (``test_<op>.py``) take ``backend`` as a parameter built by
:func:`backend_params`: a Triton case is skipped, not failed, where Triton cannot run, and
the other backends' cases run everywhere. Triton cases run on CUDA when there is a GPU,
else on the CPU through the Triton interpreter (``TRITON_INTERPRET=1`` in pytest's
environment); the PyTorch backends run on the CPU.
"""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64 on the CPU; fails on a shape mismatch or any
    non-finite value (NaN never passes)."""
    assert got.shape == ref.shape, f"shape {tuple(got.shape)} != {tuple(ref.shape)}"
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(got).all(), "non-finite values"
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# ---------------------------------------------------------------- where backends run


def _triton_runs_on() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    if torch.cuda.is_available():
        return "cuda"
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else None


#: The device Triton kernels run on here ("cuda", or "cpu" under the interpreter), None
#: where they cannot run.
TRITON_DEVICE = _triton_runs_on()
CUDA = TRITON_DEVICE == "cuda"
needs_triton = pytest.mark.skipif(TRITON_DEVICE is None, reason="needs CUDA or TRITON_INTERPRET=1")


def device_of(backend: str) -> str:
    """Where a backend's test inputs live: the Triton device for "triton", else the CPU."""
    return TRITON_DEVICE if backend == "triton" else "cpu"


def backend_params(*backends: str) -> list:
    """``backend`` parameters, named by the backend; "triton" is skipped where it cannot run."""
    return [pytest.param(b, id=b, marks=[needs_triton] if b == "triton" else []) for b in backends]


def triton_device() -> str:
    """The device the Triton tests run on: "cuda" when there is a GPU, else "cpu" through
    the Triton interpreter (``TRITON_INTERPRET=1`` in pytest's environment); otherwise
    the calling test module is skipped."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    pytest.skip("needs CUDA or TRITON_INTERPRET=1", allow_module_level=True)


# ---------------------------------------------------------------- inputs


def randn(g: torch.Generator, *shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Standard normal draws from g in float32, then moved and cast to (device, dtype)."""
    return torch.randn(*shape, generator=g).to(device, dtype)


def randn64(g: torch.Generator, *shape, scale: float = 1.0) -> torch.Tensor:
    """Standard normal draws from g in float64, times ``scale``."""
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def ssd_inputs(batch, L, H, P, G, N, dtype=torch.float32, *, D="head", z=True, bias=True,
               h0=True, seed=0, dt_shift=-1.0, A_scale=0.5) -> dict:
    """Random inputs of the SSD scan (Mamba-2) in its ranges, drawn in float64 and cast to
    dtype: x (b, L, h, p), dt (b, L, h), A (h,), B and C (b, L, g, n), D (None, "head":
    (h,) or "channel": (h, p)), z (b, L, h, p), dt_bias (h,), initial_states (b, h, p, n)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return randn64(g, *shape, scale=scale)

    t = dict(
        x=rnd(batch, L, H, P), dt=rnd(batch, L, H, scale=0.5) + dt_shift,
        A=-torch.exp(rnd(H, scale=A_scale)), B=rnd(batch, L, G, N), C=rnd(batch, L, G, N),
        D=None if D is None else rnd(H) if D == "head" else rnd(H, P),
        z=rnd(batch, L, H, P) if z else None, dt_bias=rnd(H, scale=0.3) if bias else None,
        initial_states=rnd(batch, H, P, N) if h0 else None,
    )
    return {k: None if v is None else v.to(dtype) for k, v in t.items()}


def to64(tensors: dict) -> dict:
    """The same tensors in float64 (None stays None): the oracle's inputs."""
    return {k: None if v is None else v.double() for k, v in tensors.items()}


# ---------------------------------------------------------------- forward + backward


def leaf_copies(tensors: dict) -> dict:
    """Detached copies that require grad, by name (None stays None)."""
    return {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in tensors.items()}


def backward_weighted(outs, weights) -> None:
    """Backward of sum_i <outs[i], weights[i]> in float64: every output gets its own
    random weighting, so no gradient is a plain sum that could hide an error."""
    sum((o.double() * w.double()).sum() for o, w in zip(outs, weights)).backward()


def grads_of(leaves: dict) -> dict:
    """The gradients of the leaves that were given, by name."""
    return {k: v.grad for k, v in leaves.items() if v is not None}


def selective_scan_inputs(batch, dim, L, n, groups=None, dtype=torch.float32, *, D=True, z=True, bias=True,
                          h0=True, seed=0, delta_scale=0.5, A_scale=0.5, draws=torch.float64, params_dtype=None,
                          device="cpu") -> dict:
    """Random inputs of the selective scan (Mamba-1) in the ranges Mamba produces (decays
    from mild to strong): u, delta and z (b, d, L), A (d, n), B and C (b, n, L), or
    (b, g, n, L) with ``groups``, D and delta_bias (d,), initial_state (b, d, n); D, z,
    delta_bias and initial_state None where switched off.

    Drawn in ``draws`` from one generator of ``seed``, then moved to ``device``; u, delta,
    B, C and z are cast to dtype, the parameters and the state (A, D, delta_bias,
    initial_state) to ``params_dtype`` (default: dtype). float32 parameters beside bf16
    activations are what a layer with float32 weights gives the kernels."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=draws) * scale).to(device)

    bc = (batch, n, L) if groups is None else (batch, groups, n, L)
    t = dict(
        u=rnd(batch, dim, L), delta=rnd(batch, dim, L, scale=delta_scale) - 1.0,
        A=-torch.exp(rnd(dim, n, scale=A_scale)), B=rnd(*bc), C=rnd(*bc),
        D=rnd(dim) if D else None, z=rnd(batch, dim, L) if z else None,
        delta_bias=rnd(dim, scale=0.3) - 1.0 if bias else None,
        initial_state=rnd(batch, dim, n) if h0 else None,
    )
    params = {"A", "D", "delta_bias", "initial_state"}
    return {k: None if v is None else v.to((params_dtype or dtype) if k in params else dtype) for k, v in t.items()}
