"""The Mamba-1 decoding step (``selective_state_update``): steps from an initial state
against the sequential reference scan on both backends (fp32 and bf16 inputs); the Triton
step against the PyTorch step (output and the state updated in place) over batch sizes,
odd dims, d_state 1/16, optional D / z / dt_bias / softplus, fp32 / bf16 / fp16 inputs,
strided views, the layer's fused inputs (A as A_log, dt as the dt projection's input);
dispatch rules and the input checks.
"""
from __future__ import annotations

import pytest
import torch

from mimetic.ops import selective_state_update
from mimetic.ops.selective_scan import selective_scan_ref

from .numerics import CUDA, TRITON_DEVICE, backend_params, device_of, needs_triton, randn, rel_err

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Triton against the PyTorch step on the same inputs, ||got - ref|| / ||ref||: both compute
# in float32 from the same rounded inputs, so only the output rounding differs.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def rnd(g, *shape, dtype=torch.float32, device=None):
    return randn(g, *shape, dtype=dtype, device=device or TRITON_DEVICE)


def step_inputs(batch, dim, n, dtype, seed=0, device=None):
    """One step's inputs: state (b, d, n) fp32, x (b, d), dt (b, d), A (d, n), B and C
    (b, n), D (d,), z (b, d), dt_bias (d,)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, dtype=torch.float32: rnd(g, *s, dtype=dtype, device=device)  # noqa: E731
    return dict(
        state=r(batch, dim, n), x=r(batch, dim, dtype=dtype),
        dt=(0.5 * r(batch, dim) - 1.0).to(dtype), A=-torch.exp(0.5 * r(dim, n)),
        B=r(batch, n, dtype=dtype), C=r(batch, n, dtype=dtype), D=r(dim),
        z=r(batch, dim, dtype=dtype), dt_bias=0.3 * r(dim) - 1.0,
    )


ALL = dict(D=True, z=True, bias=True, softplus=True)


def step(t, backend, opts=ALL):
    """(y, state after) of one step on a copy of t's state; opts says which optional inputs."""
    state = t["state"].clone()
    y = selective_state_update(state, t["x"], t["dt"], t["A"], t["B"], t["C"],
                               D=t["D"] if opts["D"] else None, z=t["z"] if opts["z"] else None,
                               dt_bias=t["dt_bias"] if opts["bias"] else None,
                               dt_softplus=opts["softplus"], backend=backend)
    return y, state


# ---------------------------------------------------------------- steps against the reference scan


# The steps against the float64 reference scan on the same (rounded) inputs: fp32 arithmetic
# only; bf16 adds one rounding of each output (unit roundoff 2^-8, twice that allowed). The
# state stays float32, so it keeps the fp32 tolerance.
SCAN_TOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", backend_params("torch", "triton"))
def test_steps_match_scan(backend, dtype):
    """Six steps from an initial state == the sequential scan over six steps. x, dt, B, C, z
    in ``dtype``; A, D, dt_bias and the state in float32, as the layer passes them."""
    batch, dim, n, L = 2, 9, 4, 6
    dev = device_of(backend)
    g = torch.Generator().manual_seed(1)
    r = lambda *s, dtype=torch.float32: rnd(g, *s, dtype=dtype, device=dev)  # noqa: E731
    u, delta = r(batch, dim, L, dtype=dtype), (0.5 * r(batch, dim, L) - 1.0).to(dtype)
    A, B, C = -torch.exp(0.5 * r(dim, n)), r(batch, n, L, dtype=dtype), r(batch, n, L, dtype=dtype)
    D, z, bias, h0 = r(dim), r(batch, dim, L, dtype=dtype), 0.3 * r(dim) - 1.0, r(batch, dim, n)
    ref, last = selective_scan_ref(*(v.double() for v in (u, delta, A, B, C)), D=D.double(),
                                   z=z.double(), delta_bias=bias.double(), delta_softplus=True,
                                   return_last_state=True, initial_state=h0.double())
    state = h0.clone()
    ys = [selective_state_update(state, u[..., i], delta[..., i], A, B[..., i], C[..., i], D=D,
                                 z=z[..., i], dt_bias=bias, dt_softplus=True, backend=backend)
          for i in range(L)]
    y = torch.stack(ys, dim=-1)
    assert y.dtype == dtype
    assert rel_err(y, ref) < SCAN_TOL[dtype]
    assert rel_err(state, last) < SCAN_TOL[torch.float32]


# ---------------------------------------------------------------- Triton against the PyTorch step


CASES = [  # shape (batch, dim, n) and the optional inputs
    pytest.param(dict(shape=(1, 5, 16), D=True, z=True, bias=True, softplus=True), id="1x5x16-all"),
    pytest.param(dict(shape=(3, 37, 16), D=False, z=True, bias=True, softplus=True), id="3x37x16-no_D"),
    pytest.param(dict(shape=(3, 70, 1), D=True, z=False, bias=False, softplus=False), id="3x70x1-D_only-raw_dt"),
    pytest.param(dict(shape=(1, 3, 5), D=True, z=True, bias=False, softplus=True), id="1x3x5-no_bias"),
]
if CUDA:  # the benchmark model's layer (d_model 768), batch 64
    CASES += [pytest.param(dict(shape=(64, 1536, 16), **ALL), id="64x1536x16-layer")]


@needs_triton
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_triton_matches_torch(case, dtype):
    batch, dim, n = case["shape"]
    t = step_inputs(batch, dim, n, dtype, seed=dim)
    y, state = step(t, "triton", case)
    y_ref, state_ref = step(t, "torch", case)
    assert y.dtype == dtype and state.dtype == torch.float32
    assert rel_err(y, y_ref) < TOL[dtype]
    assert rel_err(state, state_ref) < 1e-5


@needs_triton
def test_triton_wide_blocks():
    """Enough rows that the kernel widens its channel block (64 here; 128 at batch 64 on
    the GPU case above); a dim that is not a multiple of the block."""
    t = step_inputs(40, 1000, 16, torch.float32, seed=5)
    y, state = step(t, "triton")
    y_ref, state_ref = step(t, "torch")
    assert rel_err(y, y_ref) < TOL[torch.float32] and rel_err(state, state_ref) < 1e-5


@needs_triton
def test_triton_strided_views():
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


# ---------------------------------------------------------------- the layer's fused inputs


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.float16], ids=str)
def test_fused_dt_proj_and_A_log(dtype, state_dtype):
    """A given as A_log and dt as the dt projection's low-rank input (what the Mamba layer
    passes): same as forming A and dt first, on both backends; also with a half state."""
    batch, dim, n, rank = 3, 37, 16, 5
    t = step_inputs(batch, dim, n, dtype, seed=11)
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


# ---------------------------------------------------------------- dispatch and input checks


@needs_triton
def test_float64_and_grad_take_the_torch_path():
    t = {k: v.double() for k, v in step_inputs(2, 4, 3, torch.float32).items()}
    y, _ = step(t, "triton")
    y_ref, _ = step(t, "torch")
    assert y.dtype == torch.float64 and torch.equal(y, y_ref)
    t = step_inputs(2, 4, 3, torch.float32)
    t["x"].requires_grad_(True)
    y, _ = step(t, "auto")
    assert y.requires_grad  # auto fell back to the differentiable PyTorch step
    if CUDA:
        with pytest.raises(RuntimeError, match="no backward"):
            step(t, "triton")


def test_shape_errors():
    s = step_inputs(2, 4, 3, torch.float32, device="cpu")
    with pytest.raises(ValueError, match="B must have shape"):
        selective_state_update(s["state"], s["x"], s["dt"], s["A"], s["B"][:, :2], s["C"])
    with pytest.raises(ValueError, match="dt must have shape"):
        selective_state_update(s["state"], s["x"], s["dt"], s["A"], s["B"], s["C"],
                               dt_proj_weight=torch.zeros(4, 2))
