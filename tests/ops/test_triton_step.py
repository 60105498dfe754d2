"""Triton decoding steps (Mamba-1 ``selective_state_update``, Mamba-2 ``ssd_state_update``)
vs the PyTorch steps and vs the sequential reference scans: outputs and the state
updated in place, over batch sizes, odd dims, d_state 1/16, groups, optional D / z /
dt_bias / softplus / dt_limit, and fp32 / bf16 / fp16 inputs.

Runs on CUDA when present, else through the Triton interpreter (``TRITON_INTERPRET=1``
in the environment of the pytest process); see test_triton_selective_scan.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from numerics import rel_err, triton_device

DEVICE = triton_device()  # skips this module where Triton cannot run

from mimetic.ops import selective_state_update, ssd_state_update  # noqa: E402
from mimetic.ops.selective_scan import selective_scan_ref  # noqa: E402
from mimetic.ops.ssd import ssd_scan_ref  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# ||got - ref|| / ||ref|| against the PyTorch step on the same inputs: both compute in
# float32 from the same rounded inputs, so only the output rounding differs.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def rnd(g, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g).to(DEVICE, dtype)


# ---------------------------------------------------------------- Mamba-1

def ss_inputs(batch, dim, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        state=rnd(g, batch, dim, n), x=rnd(g, batch, dim, dtype=dtype),
        dt=(0.5 * rnd(g, batch, dim) - 1.0).to(dtype), A=-torch.exp(0.5 * rnd(g, dim, n)),
        B=rnd(g, batch, n, dtype=dtype), C=rnd(g, batch, n, dtype=dtype), D=rnd(g, dim),
        z=rnd(g, batch, dim, dtype=dtype), dt_bias=0.3 * rnd(g, dim) - 1.0,
    )


def ss_step(t, backend, use_D, use_z, use_bias, softplus):
    state = t["state"].clone()
    y = selective_state_update(state, t["x"], t["dt"], t["A"], t["B"], t["C"],
                               D=t["D"] if use_D else None, z=t["z"] if use_z else None,
                               dt_bias=t["dt_bias"] if use_bias else None,
                               dt_softplus=softplus, backend=backend)
    return y, state


SS_CASES = [  # (batch, dim, n, D, z, dt_bias, softplus)
    (1, 5, 16, True, True, True, True),
    (3, 37, 16, False, True, True, True),
    (3, 70, 1, True, False, False, False),
    (1, 3, 5, True, True, False, True),
]
if DEVICE == "cuda":  # the benchmark model's layer (d_model 768), batch 64
    SS_CASES += [(64, 1536, 16, True, True, True, True)]


@pytest.mark.parametrize("case", SS_CASES, ids=lambda c: "x".join(map(str, c[:3])))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_selective_step_matches_torch(case, dtype):
    batch, dim, n, *flags = case
    t = ss_inputs(batch, dim, n, dtype, seed=dim)
    y, state = ss_step(t, "triton", *flags)
    y_ref, state_ref = ss_step(t, "torch", *flags)
    assert y.dtype == dtype and state.dtype == torch.float32
    assert rel_err(y, y_ref) < TOL[dtype]
    assert rel_err(state, state_ref) < 1e-5


def test_selective_step_wide_blocks():
    """Enough rows that the kernel widens its channel block (64 here; 128 at batch 64 on
    the GPU case above); a dim that is not a multiple of the block."""
    t = ss_inputs(40, 1000, 16, torch.float32, seed=5)
    y, state = ss_step(t, "triton", True, True, True, True)
    y_ref, state_ref = ss_step(t, "torch", True, True, True, True)
    assert rel_err(y, y_ref) < TOL[torch.float32] and rel_err(state, state_ref) < 1e-5


def test_selective_steps_match_scan():
    """Six Triton steps from an initial state == the sequential scan over six steps."""
    batch, dim, n, L = 2, 9, 4, 6
    g = torch.Generator().manual_seed(1)
    u, delta = rnd(g, batch, dim, L), 0.5 * rnd(g, batch, dim, L) - 1.0
    A, B, C = -torch.exp(0.5 * rnd(g, dim, n)), rnd(g, batch, n, L), rnd(g, batch, n, L)
    D, z, bias, h0 = rnd(g, dim), rnd(g, batch, dim, L), 0.3 * rnd(g, dim) - 1.0, rnd(g, batch, dim, n)
    ref, last = selective_scan_ref(*(v.double() for v in (u, delta, A, B, C)), D=D.double(),
                                   z=z.double(), delta_bias=bias.double(), delta_softplus=True,
                                   return_last_state=True, initial_state=h0.double())
    state = h0.clone()
    ys = [selective_state_update(state, u[..., i], delta[..., i], A, B[..., i], C[..., i], D=D,
                                 z=z[..., i], dt_bias=bias, dt_softplus=True, backend="triton")
          for i in range(L)]
    assert rel_err(torch.stack(ys, dim=-1), ref) < 1e-5
    assert rel_err(state, last) < 1e-5


def test_selective_step_strided_views():
    """Slices of one projection (the layers pass those) give the same answer."""
    batch, dim, n = 3, 6, 4
    g = torch.Generator().manual_seed(2)
    xz, dbc = rnd(g, batch, 2 * dim), rnd(g, batch, dim + 2 * n)
    x, z = xz.chunk(2, dim=-1)
    dt, B, C = dbc.split([dim, n, n], dim=-1)
    A, state = -torch.exp(rnd(g, dim, n)), rnd(g, batch, dim, n)
    outs = []
    for backend in ("triton", "torch"):
        s = state.clone()
        outs.append((selective_state_update(s, x, dt, A, B, C, z=z, dt_softplus=True,
                                            backend=backend), s))
    assert rel_err(outs[0][0], outs[1][0]) < 1e-5 and rel_err(outs[0][1], outs[1][1]) < 1e-5


# ---------------------------------------------------------------- Mamba-2

def ssd_inputs(batch, H, P, G, N, dtype, D_per_p, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        state=rnd(g, batch, H, P, N), x=rnd(g, batch, H, P, dtype=dtype),
        dt=(0.5 * rnd(g, batch, H) - 1.0).to(dtype), A=-torch.exp(0.5 * rnd(g, H)),
        B=rnd(g, batch, G, N, dtype=dtype), C=rnd(g, batch, G, N, dtype=dtype),
        D=rnd(g, H, P) if D_per_p else rnd(g, H), z=rnd(g, batch, H, P, dtype=dtype),
        dt_bias=0.3 * rnd(g, H) - 1.0,
    )


def ssd_step(t, backend, use_D, use_z, use_bias, softplus, limit):
    state = t["state"].clone()
    y = ssd_state_update(state, t["x"], t["dt"], t["A"], t["B"], t["C"],
                         D=t["D"] if use_D else None, z=t["z"] if use_z else None,
                         dt_bias=t["dt_bias"] if use_bias else None, dt_softplus=softplus,
                         dt_limit=limit, backend=backend)
    return y, state


NO_LIMIT = (0.0, math.inf)
SSD_CASES = [  # (batch, H, P, G, N, D per head / per channel / none, z, dt_bias, softplus, limit)
    (1, 4, 8, 2, 16, "head", True, True, True, NO_LIMIT),
    (3, 6, 5, 3, 16, "channel", False, True, True, (0.2, 0.6)),
    (3, 2, 3, 1, 1, None, True, False, False, NO_LIMIT),
    (1, 3, 33, 1, 7, "channel", True, True, True, (0.0, 0.4)),
]
if DEVICE == "cuda":  # the benchmark model's layer (d_model 768), batch 64
    SSD_CASES += [(64, 24, 64, 1, 128, "head", False, True, True, NO_LIMIT)]


@pytest.mark.parametrize("case", SSD_CASES, ids=lambda c: "x".join(map(str, c[:5])))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ssd_step_matches_torch(case, dtype):
    batch, H, P, G, N, D, *flags = case
    t = ssd_inputs(batch, H, P, G, N, dtype, D_per_p=D == "channel", seed=H * P)
    y, state = ssd_step(t, "triton", D is not None, *flags)
    y_ref, state_ref = ssd_step(t, "torch", D is not None, *flags)
    assert y.dtype == dtype and state.dtype == torch.float32
    assert rel_err(y, y_ref) < TOL[dtype]
    assert rel_err(state, state_ref) < 1e-5


def test_ssd_steps_match_scan():
    """Five Triton steps from an initial state == the sequential SSD reference."""
    batch, L, H, P, G, N = 2, 5, 4, 3, 2, 8
    g = torch.Generator().manual_seed(3)
    x, dt = rnd(g, batch, L, H, P), 0.5 * rnd(g, batch, L, H) - 1.0
    A, B, C = -torch.exp(0.5 * rnd(g, H)), rnd(g, batch, L, G, N), rnd(g, batch, L, G, N)
    D, z, bias, h0 = rnd(g, H, P), rnd(g, batch, L, H, P), 0.3 * rnd(g, H) - 1.0, rnd(g, batch, H, P, N)
    limit = (0.1, 0.5)
    ref, last = ssd_scan_ref(*(v.double() for v in (x, dt, A, B, C)), D=D.double(), z=z.double(),
                             dt_bias=bias.double(), dt_softplus=True, dt_limit=limit,
                             initial_states=h0.double(), return_final_states=True)
    state = h0.clone()
    ys = [ssd_state_update(state, x[:, i], dt[:, i], A, B[:, i], C[:, i], D=D, z=z[:, i],
                           dt_bias=bias, dt_softplus=True, dt_limit=limit, backend="triton")
          for i in range(L)]
    assert rel_err(torch.stack(ys, dim=1), ref) < 1e-5
    assert rel_err(state, last) < 1e-5


def test_ssd_step_strided_views_and_state():
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


# ---------------------------------------------------------------- dispatch

def test_float64_and_grad_take_the_torch_path():
    t = {k: v.double() for k, v in ss_inputs(2, 4, 3, torch.float32).items()}
    y, _ = ss_step(t, "triton", True, True, True, True)
    y_ref, _ = ss_step(t, "torch", True, True, True, True)
    assert y.dtype == torch.float64 and torch.equal(y, y_ref)
    t = ss_inputs(2, 4, 3, torch.float32)
    t["x"].requires_grad_(True)
    y, _ = ss_step(t, "auto", True, True, True, True)
    assert y.requires_grad  # auto fell back to the differentiable PyTorch step
    if DEVICE == "cuda":
        with pytest.raises(RuntimeError, match="no backward"):
            ss_step(t, "triton", True, True, True, True)


def test_shape_errors():
    t = ssd_inputs(2, 4, 3, 2, 5, torch.float32, D_per_p=False)
    with pytest.raises(ValueError, match="state must have shape"):
        ssd_state_update(t["state"][:, :, :2], t["x"], t["dt"], t["A"], t["B"], t["C"])
    with pytest.raises(ValueError, match="ngroups=3"):
        B = t["B"][:, :1].expand(-1, 3, -1)
        ssd_state_update(t["state"], t["x"], t["dt"], t["A"], B, B)
    s = ss_inputs(2, 4, 3, torch.float32)
    with pytest.raises(ValueError, match="B must have shape"):
        selective_state_update(s["state"], s["x"], s["dt"], s["A"], s["B"][:, :2], s["C"])


# ---------------------------------------------------------------- fused layer inputs

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.float16], ids=str)
def test_selective_step_fused_dt_proj_and_A_log(dtype, state_dtype):
    """A given as A_log and dt as the dt projection's low-rank input (what the Mamba layer
    passes): same as forming A and dt first, on both backends; also with a half state."""
    batch, dim, n, rank = 3, 37, 16, 5
    t = ss_inputs(batch, dim, n, dtype, seed=11)
    g = torch.Generator().manual_seed(12)
    A_log = 0.5 * rnd(g, dim, n)
    low, W = rnd(g, batch, rank, dtype=dtype), (0.3 * rnd(g, dim, rank)).to(dtype)
    dt = (low.float() @ W.float().t())
    t["state"] = t["state"].to(state_dtype)
    outs = {}
    for backend in ("triton", "torch"):
        s1, s2 = t["state"].clone(), t["state"].clone()
        fused = selective_state_update(s1, t["x"], low, A_log, t["B"], t["C"], D=t["D"], z=t["z"],
                                       dt_bias=t["dt_bias"], dt_softplus=True, A_is_log=True,
                                       dt_proj_weight=W, backend=backend)
        plain = selective_state_update(s2, t["x"], dt, -torch.exp(A_log), t["B"], t["C"],
                                       D=t["D"], z=t["z"], dt_bias=t["dt_bias"],
                                       dt_softplus=True, backend=backend)
        assert s1.dtype == state_dtype
        assert rel_err(fused, plain) < TOL[dtype] and rel_err(s1, s2) < TOL[state_dtype]
        outs[backend] = (fused, s1)
    assert rel_err(outs["triton"][0], outs["torch"][0]) < TOL[dtype]
    assert rel_err(outs["triton"][1], outs["torch"][1]) < TOL[state_dtype]


def test_selective_step_dt_proj_shape_error():
    s = ss_inputs(2, 4, 3, torch.float32)
    with pytest.raises(ValueError, match="dt must have shape"):
        selective_state_update(s["state"], s["x"], s["dt"], s["A"], s["B"], s["C"],
                               dt_proj_weight=torch.zeros(4, 2, device=DEVICE))


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_ssd_step_A_log(state_dtype):
    t = ssd_inputs(2, 4, 8, 2, 16, torch.float32, D_per_p=False, seed=13)
    A_log = torch.log(-t["A"])
    t["state"] = t["state"].to(state_dtype)
    for backend in ("triton", "torch"):
        s1, s2 = t["state"].clone(), t["state"].clone()
        kw = dict(D=t["D"], z=t["z"], dt_bias=t["dt_bias"], dt_softplus=True, backend=backend)
        y1 = ssd_state_update(s1, t["x"], t["dt"], A_log, t["B"], t["C"], A_is_log=True, **kw)
        y2 = ssd_state_update(s2, t["x"], t["dt"], t["A"], t["B"], t["C"], **kw)
        assert rel_err(y1, y2) < 1e-5 and rel_err(s1, s2) < TOL[state_dtype]
