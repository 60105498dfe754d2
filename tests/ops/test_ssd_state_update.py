"""The Mamba-2 decoding step (``ssd_state_update``): steps from an initial state against
the sequential SSD reference on both backends; the Triton step against the PyTorch step
(outputs and the state updated in place) over batch sizes, odd dims, d_state 1/16, groups,
optional D / z / dt_bias / softplus / dt_limit, fp32 / bf16 / fp16 inputs, strided views,
A given as A_log; the input checks.
"""
from __future__ import annotations

import math

import pytest
import torch

from mimetic.ops import ssd_state_update
from mimetic.ops.ssd import ssd_scan_ref

from .numerics import CUDA, TRITON_DEVICE, backend_params, device_of, needs_triton, randn, rel_err, ssd_inputs

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Triton against the PyTorch step on the same inputs, ||got - ref|| / ||ref||: both compute
# in float32 from the same rounded inputs, so only the output rounding differs.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
# Steps against the float64 reference scan: fp32 arithmetic; one rounding of the output.
SCAN_TOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3}
NO_LIMIT = (0.0, math.inf)


def rnd(g, *shape, dtype=torch.float32, device=None):
    return randn(g, *shape, dtype=dtype, device=device or TRITON_DEVICE)


def step_inputs(batch, H, P, G, N, dtype, D_per_p, seed=0, device=None):
    """One step's inputs: state (b, h, p, n) fp32, x (b, h, p), dt (b, h), A (h,), B and C
    (b, g, n), D (h,) or (h, p), z (b, h, p), dt_bias (h,)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, dtype=torch.float32: rnd(g, *s, dtype=dtype, device=device)  # noqa: E731
    return dict(
        state=r(batch, H, P, N), x=r(batch, H, P, dtype=dtype),
        dt=(0.5 * r(batch, H) - 1.0).to(dtype), A=-torch.exp(0.5 * r(H)),
        B=r(batch, G, N, dtype=dtype), C=r(batch, G, N, dtype=dtype),
        D=r(H, P) if D_per_p else r(H), z=r(batch, H, P, dtype=dtype),
        dt_bias=0.3 * r(H) - 1.0,
    )


def step(t, backend, opts):
    """(y, state after) of one step on a copy of t's state; opts says which optional inputs."""
    state = t["state"].clone()
    y = ssd_state_update(state, t["x"], t["dt"], t["A"], t["B"], t["C"],
                         D=t["D"] if opts["D"] else None, z=t["z"] if opts["z"] else None,
                         dt_bias=t["dt_bias"] if opts["bias"] else None, dt_softplus=opts["softplus"],
                         dt_limit=opts["limit"], backend=backend)
    return y, state


# ---------------------------------------------------------------- steps against the reference scan


@pytest.mark.parametrize("backend", backend_params("torch", "triton"))
@pytest.mark.parametrize("dtype,D", [pytest.param(torch.float32, "head", id="fp32-D_head"),
                                     pytest.param(torch.bfloat16, "channel", id="bf16-D_channel")])
def test_steps_match_scan(backend, dtype, D):
    batch, L, H, P, G, N = 2, 9, 4, 3, 2, 5
    t = {k: None if v is None else v.to(device_of(backend))
         for k, v in ssd_inputs(batch, L, H, P, G, N, dtype=dtype, D=D).items()}
    limit = (0.0, 0.9)
    ref, ref_last = ssd_scan_ref(
        *(t[k].double() for k in ("x", "dt", "A", "B", "C")), D=t["D"].double(),
        z=t["z"].double(), dt_bias=t["dt_bias"].double(), dt_softplus=True, dt_limit=limit,
        initial_states=t["initial_states"].double(), return_final_states=True)
    state = t["initial_states"].float().clone()
    ys = [ssd_state_update(state, t["x"][:, i], t["dt"][:, i], t["A"], t["B"][:, i],
                           t["C"][:, i], D=t["D"], z=t["z"][:, i], dt_bias=t["dt_bias"],
                           dt_softplus=True, dt_limit=limit, backend=backend) for i in range(L)]
    y = torch.stack(ys, dim=1)
    assert y.dtype == dtype
    assert rel_err(y, ref) < SCAN_TOL[dtype]
    assert rel_err(state, ref_last) < SCAN_TOL[torch.float32]


@pytest.mark.parametrize("backend", backend_params("torch", "triton"))
def test_steps_match_scan_with_limit(backend):
    """Five steps from an initial state == the sequential SSD reference, dt clamped."""
    batch, L, H, P, G, N = 2, 5, 4, 3, 2, 8
    dev = device_of(backend)
    g = torch.Generator().manual_seed(3)
    r = lambda *s: rnd(g, *s, device=dev)  # noqa: E731
    x, dt = r(batch, L, H, P), 0.5 * r(batch, L, H) - 1.0
    A, B, C = -torch.exp(0.5 * r(H)), r(batch, L, G, N), r(batch, L, G, N)
    D, z, bias, h0 = r(H, P), r(batch, L, H, P), 0.3 * r(H) - 1.0, r(batch, H, P, N)
    limit = (0.1, 0.5)
    ref, last = ssd_scan_ref(*(v.double() for v in (x, dt, A, B, C)), D=D.double(), z=z.double(),
                             dt_bias=bias.double(), dt_softplus=True, dt_limit=limit,
                             initial_states=h0.double(), return_final_states=True)
    state = h0.clone()
    ys = [ssd_state_update(state, x[:, i], dt[:, i], A, B[:, i], C[:, i], D=D, z=z[:, i],
                           dt_bias=bias, dt_softplus=True, dt_limit=limit, backend=backend)
          for i in range(L)]
    assert rel_err(torch.stack(ys, dim=1), ref) < 1e-5
    assert rel_err(state, last) < 1e-5


# ---------------------------------------------------------------- Triton against the PyTorch step


CASES = [  # shape (batch, H, P, G, N) and the optional inputs
    pytest.param(dict(shape=(1, 4, 8, 2, 16), D="head", z=True, bias=True, softplus=True, limit=NO_LIMIT),
                 id="1x4x8x2x16-all"),
    pytest.param(dict(shape=(3, 6, 5, 3, 16), D="channel", z=False, bias=True, softplus=True, limit=(0.2, 0.6)),
                 id="3x6x5x3x16-D_channel-no_z-limit"),
    pytest.param(dict(shape=(3, 2, 3, 1, 1), D=None, z=True, bias=False, softplus=False, limit=NO_LIMIT),
                 id="3x2x3x1x1-no_D-raw_dt"),
    pytest.param(dict(shape=(1, 3, 33, 1, 7), D="channel", z=True, bias=True, softplus=True, limit=(0.0, 0.4)),
                 id="1x3x33x1x7-D_channel-limit"),
]
if CUDA:  # the benchmark model's layer (d_model 768), batch 64
    CASES += [pytest.param(dict(shape=(64, 24, 64, 1, 128), D="head", z=False, bias=True, softplus=True,
                                limit=NO_LIMIT), id="64x24x64x1x128-layer")]


@needs_triton
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_matches_torch(case, dtype):
    batch, H, P, G, N = case["shape"]
    t = step_inputs(batch, H, P, G, N, dtype, D_per_p=case["D"] == "channel", seed=H * P)
    opts = dict(case, D=case["D"] is not None)
    y, state = step(t, "triton", opts)
    y_ref, state_ref = step(t, "torch", opts)
    assert y.dtype == dtype and state.dtype == torch.float32
    assert rel_err(y, y_ref) < TOL[dtype]
    assert rel_err(state, state_ref) < 1e-5


@needs_triton
def test_triton_strided_views_and_state():
    """Slices of one projection, and a state that is itself a strided view."""
    batch, H, P, G, N = 2, 4, 3, 2, 5
    g = torch.Generator().manual_seed(4)
    proj = rnd(g, batch, H * P + 2 * G * N + H)
    x, B, C, dt = proj.split([H * P, G * N, G * N, H], dim=-1)
    x, B, C = x.view(batch, H, P), B.view(batch, G, N), C.view(batch, G, N)
    A = -torch.exp(rnd(g, H))
    base = rnd(g, batch, H, N, P)
    outs = []
    for backend in ("triton", "torch"):
        s = base.clone().transpose(-1, -2)  # (batch, H, P, N), last-dim stride P
        outs.append((ssd_state_update(s, x, dt, A, B, C, dt_softplus=True, backend=backend), s))
    assert rel_err(outs[0][0], outs[1][0]) < 1e-5 and rel_err(outs[0][1], outs[1][1]) < 1e-5


@pytest.mark.parametrize("backend", backend_params("torch", "triton"))
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_A_log(backend, state_dtype):
    """A given as A_log (what the layer passes) == forming A = -exp(A_log) first."""
    t = step_inputs(2, 4, 8, 2, 16, torch.float32, D_per_p=False, seed=13, device=device_of(backend))
    A_log = torch.log(-t["A"])
    t["state"] = t["state"].to(state_dtype)
    s1, s2 = t["state"].clone(), t["state"].clone()
    kw = dict(D=t["D"], z=t["z"], dt_bias=t["dt_bias"], dt_softplus=True, backend=backend)
    y1 = ssd_state_update(s1, t["x"], t["dt"], A_log, t["B"], t["C"], A_is_log=True, **kw)
    y2 = ssd_state_update(s2, t["x"], t["dt"], t["A"], t["B"], t["C"], **kw)
    assert rel_err(y1, y2) < 1e-5 and rel_err(s1, s2) < TOL[state_dtype]


# ---------------------------------------------------------------- input checks


def test_shape_errors():
    t = step_inputs(2, 4, 3, 2, 5, torch.float32, D_per_p=False, device="cpu")
    with pytest.raises(ValueError, match="state must have shape"):
        ssd_state_update(t["state"][:, :, :2], t["x"], t["dt"], t["A"], t["B"], t["C"])
    with pytest.raises(ValueError, match="ngroups=3"):
        B = t["B"][:, :1].expand(-1, 3, -1)
        ssd_state_update(t["state"], t["x"], t["dt"], t["A"], B, B)
