"""The Mamba-1 selective scan: each backend (the chunked torch path, the Triton kernels)
against the float64 sequential reference, outputs, last state and every gradient; the
public entry's dispatch to each backend (the reference included); the chunked path's own
pieces (chunking, worker threads, gradcheck); the Triton kernels' own pieces (the two
forward kernels and their tiles, the configuration table, strided layouts, the compile
op, the Mamba layer on Triton); the input checks. The decoding step
(``selective_state_update``) is tested in test_selective_state_update.py.

The oracle is ``selective_scan_ref`` in float64 on the *same* inputs (bf16/fp16 inputs are
rounded first), so tolerances cover only the backend's own float32 arithmetic and the
final rounding of its outputs and gradients to the input dtype. Errors are relative in
norm: ||got - ref|| / ||ref||.

Triton cases run on CUDA when there is a GPU, else on the CPU through the Triton
interpreter (``TRITON_INTERPRET=1`` in pytest's environment), and are skipped where
neither can run; on the interpreter (which executes every tile op in numpy) the sizes
stay small, on a GPU larger ones are added.

Each case draws its inputs in one of two ways (:func:`case_inputs`), the one it was
written with: "float64" (every tensor drawn in float64, then cast to the input dtype) or
"float32" (drawn in float32; A, D, delta_bias and the state kept float32 beside the
activations, as a layer's parameters are).
"""
from __future__ import annotations

import importlib
from dataclasses import replace

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mimetic.ops.selective_scan import BACKENDS, selective_scan, selective_scan_ref
from mimetic.ops.selective_scan.chunked import selective_scan_torch
from mimetic.ops.selective_scan.triton_config import (
    LaneTiles,
    ScanConfig,
    SegmentTiles,
    default_config,
    next_pow2,
)

from .numerics import (
    CUDA,
    TRITON_DEVICE,
    backend_params,
    backward_weighted,
    device_of,
    grads_of,
    leaf_copies,
    needs_triton,
    randn64,
    rel_err,
    selective_scan_inputs,
    to64,
)

# ``mimetic.ops.selective_scan`` the attribute is the function; get the module itself.
fast = importlib.import_module("mimetic.ops.selective_scan.chunked")
cpu = importlib.import_module("mimetic.cpu")

# Bounds on the relative errors, per backend and input dtype.
TOL = {
    # The chunked path. fp32: float32 arithmetic only. bf16/fp16: one rounding of each
    # result to the input dtype, whose unit roundoff is 2^-8 (bf16) / 2^-11 (fp16); we
    # allow twice that.
    "torch": {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3},
    # The kernels. fp32: their float32 arithmetic (exp2, reassociated scan, atomics);
    # bf16/fp16: one rounding of each output to that dtype (bf16 has 8 mantissa bits:
    # ~4e-3 per element).
    "triton": {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2},
}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
BF16, FP32 = torch.bfloat16, torch.float32


def shape_id(s) -> str:
    """(batch, dim, L, n, groups) as "bxdxLxn" with "g<groups>" where grouped."""
    return "x".join(map(str, s[:4])) + (f"g{s[4]}" if s[4] else "")


# ---------------------------------------------------------------- inputs, forward + backward


def float64_upstream(t):
    """(dout, dlast) of a "float64" case (see :func:`case_inputs`): float32 draws of seed
    1 on u's device, dout rounded to u's dtype (a gradient the output can carry)."""
    batch, dim, L = t["u"].shape
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(batch, dim, L, generator=g).to(t["u"].dtype)
    return dout.to(t["u"].device), torch.randn(batch, dim, t["A"].shape[1], generator=g).to(t["u"].device)


def case_inputs(draws, batch, dim, L, n, groups=None, dtype=torch.float32, *, seed=0, device="cpu", **opts):
    """(inputs, dout (b, d, L), dlast (b, d, n)) of one case on ``device``; the loss is
    sum(out * dout) + sum(last state * dlast).

    * draws "float64": :func:`selective_scan_inputs` in float64, every tensor cast to
      dtype; dout and dlast float32 draws of seed 1, dout rounded to dtype (a gradient
      the output can carry);
    * draws "float32": drawn in float32, A, D, delta_bias and initial_state kept float32;
      dout and dlast float64 draws of seed + 1.
    ``opts``: :func:`selective_scan_inputs`'s switches (D, z, bias, h0, scales)."""
    if draws == "float64":
        t = selective_scan_inputs(batch, dim, L, n, groups, dtype, seed=seed, device=device, **opts)
        return (t, *float64_upstream(t))
    assert draws == "float32", draws
    t = selective_scan_inputs(batch, dim, L, n, groups, dtype, seed=seed, device=device, draws=torch.float32,
                              params_dtype=torch.float32, **opts)
    g = torch.Generator().manual_seed(seed + 1)
    return t, randn64(g, batch, dim, L).to(device), randn64(g, batch, dim, n).to(device)


def kernel_inputs(batch, dim, L, n, groups, dtype, *, h0=False, seed=0, **opts) -> dict:
    """The Triton-only tests' inputs: "float32" draws on the Triton device, no initial
    state unless asked for."""
    return case_inputs("float32", batch, dim, L, n, groups, dtype, h0=h0, seed=seed, device=TRITON_DEVICE,
                       **opts)[0]


def config_for(t, need_grad, forward=None, **segment):
    """The kernels' configuration for inputs t: :func:`default_config`'s, except

    * on the interpreter (which runs every tile op in numpy) 32-step lane tiles instead
      of 64-256 and, without a gradient, 8-step segments instead of 64: fast, and at
      these lengths several chunks / segments. Same kernel code;
    * ``forward``: that forward kernel; ``segment``: segment tiles to replace.
    """
    cfg = default_config(t["u"], t["A"], t["B"], need_grad)
    if not CUDA:
        lane = replace(cfg.lane, steps=max(32, next_pow2(t["A"].shape[1])))
        steps = lane.steps if need_grad else 8
        cfg = replace(cfg, lane=lane, segment=replace(cfg.segment, steps=steps))
    return replace(cfg, forward=forward or cfg.forward, segment=replace(cfg.segment, **segment))


def run(backend, t, dout, dlast, *, softplus=True, last=True, **kw):
    """(out, last state or None, gradients by name) of one forward + backward of
    ``BACKENDS[backend]`` on leaf copies of t; ``kw`` goes to the backend (a Triton
    ``config``)."""
    leaves = leaf_copies(t)
    res = BACKENDS[backend](leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], D=leaves["D"],
                            z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=softplus,
                            return_last_state=last, initial_state=leaves["initial_state"], **kw)
    out, state = res if last else (res, None)
    backward_weighted((out, state) if last else (out,), (dout, dlast) if last else (dout,))
    return out, state, grads_of(leaves)


def check(backend, t, dout, dlast, *, softplus=True, last=True, config=None):
    """``backend`` on t against the float64 reference on the same values: output, last
    state (with ``last``) and every gradient within ``TOL[backend]``; dtypes and shapes
    as the inputs'. Triton runs with ``config`` (default: :func:`config_for`'s)."""
    dtype = t["u"].dtype
    fp = torch.float64 if dtype == torch.float64 else torch.float32   # the last state's dtype
    kw = {"config": config or config_for(t, True)} if backend == "triton" else {}
    out, state, grads = run(backend, t, dout, dlast, softplus=softplus, last=last, **kw)
    t64 = to64(t)
    r_out, r_state, r_grads = run("reference", t64, dout, dlast, softplus=softplus, last=last)
    tol = TOL[backend][dtype]
    assert out.dtype == dtype and out.shape == t["u"].shape
    errors, bounds = {"out": rel_err(out, r_out)}, {"out": tol}
    if last:
        assert state.dtype == fp and state.shape == r_state.shape
        # The last state is a sum of terms exp(A sum delta) delta_s B_s u_s (+ the decayed
        # h0) that can cancel to far below their own size (hypothesis found 0.0042 from
        # terms of ~0.1-1), so its error is measured against the size of those terms: the
        # same sum of their absolute values, from the reference. Round-off is relative to
        # the terms, not to what is left; the state is float32 whatever the input dtype.
        terms = {**t64, "u": t64["u"].abs(), "B": t64["B"].abs(),
                 "initial_state": None if t64["initial_state"] is None else t64["initial_state"].abs()}
        _, scale, _ = run("reference", terms, dout, dlast, softplus=softplus)
        errors["last_state/terms"] = ((state.double().cpu() - r_state.cpu()).norm()
                                      / scale.cpu().norm().clamp_min(1e-30)).item()
        bounds["last_state/terms"] = TOL[backend][fp]
        assert torch.isfinite(state).all()
        if backend == "triton":   # the kernels also meet the plain relative error
            errors["last_state"], bounds["last_state"] = rel_err(state, r_state), tol
    assert grads.keys() == r_grads.keys()
    for k, ref_g in r_grads.items():
        assert grads[k] is not None, k
        assert grads[k].shape == ref_g.shape and grads[k].dtype == t[k].dtype, k
        errors["d" + k], bounds["d" + k] = rel_err(grads[k], ref_g), tol
    bad = {k: v for k, v in errors.items() if not v < bounds[k]}
    assert not bad, f"bounds {bounds} exceeded: {bad} (all: {errors})"


def check_case(backend, case, dtype=torch.float32):
    """:func:`check` of one case: a dict of ``shape`` (batch, dim, L, n, groups), ``draws``
    (see :func:`case_inputs`), ``softplus`` and ``last`` (default True), ``positive_delta``
    (raw delta made >= 0, so that it decays without softplus) and the input switches."""
    case = dict(case)
    shape, draws = case.pop("shape"), case.pop("draws")
    softplus, last = case.pop("softplus", True), case.pop("last", True)
    positive = case.pop("positive_delta", False)
    t, dout, dlast = case_inputs(draws, *shape, dtype, device=device_of(backend), **case)
    if positive:
        t["delta"] = t["delta"].abs()
    check(backend, t, dout, dlast, softplus=softplus, last=last)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of the chunked path of at most this many elements: several chunks (and a
    ragged last one) even at test sizes."""
    def set_elems(elems):
        monkeypatch.setattr(fast, "_CHUNK_ELEMS", elems)
    return set_elems


# ---------------------------------------------------------------- each backend against the reference

BOTH = backend_params("torch", "triton")


def shape_case(shape, draws, **opts):
    return pytest.param(dict(shape=shape, draws=draws, h0=True, **opts), id=f"{shape_id(shape)}-{draws}")


# (batch, dim, L, n, groups). "float64": a single step, batch 1 with odd sizes, d_state 1,
# groups, d_state 128 with one channel per group, a long-ish prime-ish length. "float32":
# lengths that are not a multiple of the interpreter's 32-step chunk (and shorter than
# one), small and large d_state, grouped B/C, channels a multiple of 32.
FP32_CASES = [shape_case(s, "float64") for s in [
    (2, 4, 1, 3, None), (1, 3, 7, 5, None), (2, 6, 33, 1, None), (2, 4, 65, 16, 2), (1, 8, 40, 128, 8),
    (2, 5, 257, 4, None),
]] + [shape_case(s, "float32") for s in [
    (2, 4, 37, 16, None), (1, 3, 5, 4, None), (1, 8, 70, 5, 2), (1, 4, 11, 64, 4), (1, 32, 21, 16, None),
    (1, 64, 23, 8, 2),
]] + ([shape_case(s, "float32") for s in [(2, 256, 1000, 16, None), (1, 96, 777, 128, 3), (3, 64, 4099, 16, 2)]]
      if CUDA else [])


@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize("case", FP32_CASES)
def test_fp32_matches_reference(backend, case, small_chunks):
    """The chunked path both as one chunk and in chunks of 100 elements."""
    if backend == "triton" and not CUDA and case["shape"][3] > 64:
        pytest.skip("d_state 128 takes the interpreter ~50 s (d_state 64 runs there); on a GPU it runs")
    for elems in ((1 << 20, 100) if backend == "torch" else (None,)):
        if elems is not None:
            small_chunks(elems)
        check_case(backend, case)


LOW_PRECISION_CASES = [
    pytest.param(dict(shape=(2, 4, 29, 6, None), draws="float64"), id="2x4x29x6-float64"),
    pytest.param(dict(shape=(2, 4, 29, 6, 2), draws="float64"), id="2x4x29x6g2-float64"),
    pytest.param(dict(shape=(2, 4, 45, 16, None), draws="float32", h0=True, seed=3), id="2x4x45x16-float32"),
] + ([pytest.param(dict(shape=(2, 512, 2048, 16, None), draws="float32", h0=False, seed=4, last=False),
                   id="2x512x2048x16-float32-no_last_state")] if CUDA else [])


@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", LOW_PRECISION_CASES)
def test_low_precision(backend, dtype, case, small_chunks):
    small_chunks(200)
    check_case(backend, case, dtype)


OPTIONAL_CASES = [  # which optional inputs are given; "float64" cases in chunks of a few steps
    pytest.param(dict(shape=(2, 4, 19, 3, None), draws="float64", D=False, z=False, bias=False, h0=False,
                      softplus=False, positive_delta=True), id="19x3-bare"),
    pytest.param(dict(shape=(2, 4, 19, 3, None), draws="float64", D=True, z=False, bias=False, h0=False),
                 id="19x3-D-softplus"),
    pytest.param(dict(shape=(2, 4, 19, 3, None), draws="float64", D=False, z=True, bias=True, h0=False),
                 id="19x3-z-bias-softplus"),
    pytest.param(dict(shape=(2, 4, 19, 3, None), draws="float64", D=False, z=False, bias=False, h0=True,
                      softplus=False, positive_delta=True), id="19x3-h0"),
    pytest.param(dict(shape=(2, 4, 19, 3, None), draws="float64", D=True, z=True, bias=True, h0=True),
                 id="19x3-all"),
    # Without the last state; raw delta as drawn (some < 0) without softplus.
    pytest.param(dict(shape=(1, 4, 33, 8, None), draws="float32", D=False, z=False, bias=False, h0=False,
                      softplus=False, last=False), id="33x8-bare-no_last_state"),
    pytest.param(dict(shape=(1, 4, 33, 8, None), draws="float32", D=True, z=False, bias=True, h0=False,
                      last=False), id="33x8-D-bias-softplus-no_last_state"),
    pytest.param(dict(shape=(1, 4, 33, 8, None), draws="float32", D=False, z=True, bias=False, h0=True,
                      last=False), id="33x8-z-h0-softplus-no_last_state"),
]


@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize("case", OPTIONAL_CASES)
def test_optional_inputs(backend, case, small_chunks):
    small_chunks(64)
    check_case(backend, case)


@pytest.mark.parametrize("backend", BOTH)
def test_no_overflow_with_huge_decay_and_long_sequences(backend, small_chunks):
    """delta * |A| up to ~200 and 600 steps: decays underflow to exactly 0, never inf/NaN
    (cumulative sums of log-decays reach -3e4 here, so exp(-cumsum) would overflow)."""
    small_chunks(4096)
    t, dout, dlast = case_inputs("float64", 1, 3, 600, 4, delta_scale=4.0, A_scale=2.0, bias=False,
                                 device=device_of(backend))
    t["delta"] = t["delta"] + 5.0  # delta * |A| up to ~200 (measured)
    check(backend, t, dout, dlast)


@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize("layout", ["bdl", "bld", "lbd"])
def test_memory_layouts_and_inputs_left_alone(backend, layout):
    """Mamba passes transposed views of (b, L, d) tensors; the chunked path picks its copy
    strategy by layout (and may alias an already step-major input), the kernels read
    strided time through a copy: every layout gives the reference's answer and leaves
    the caller's tensors untouched."""
    t, dout, dlast = case_inputs("float64", 2, 6, 11, 3, device=device_of(backend))
    perm = {"bdl": (0, 1, 2), "bld": (0, 2, 1), "lbd": (2, 0, 1)}[layout]
    inv = [perm.index(i) for i in range(3)]
    for name in ("u", "delta", "z"):
        t[name] = t[name].permute(*perm).contiguous().permute(*inv)
    before = {k: v.clone() for k, v in t.items() if v is not None}
    check(backend, t, dout, dlast)
    for k, v in before.items():
        assert torch.equal(t[k], v), f"{k} was modified"


# ---------------------------------------------------------------- the public entry


@pytest.mark.parametrize("backend", backend_params("reference", "torch", "triton"))
def test_public_entry_calls_the_backend(backend):
    """``selective_scan(backend=...)`` gives exactly what that backend's function gives."""
    t = case_inputs("float64", 2, 4, 10, 3, device=device_of(backend))[0]
    kw = dict(D=t["D"], z=t["z"], delta_bias=t["delta_bias"], delta_softplus=True)
    args = [t[k] for k in ("u", "delta", "A", "B", "C")]
    torch.testing.assert_close(selective_scan(*args, backend=backend, **kw), BACKENDS[backend](*args, **kw),
                               rtol=0, atol=0)


def test_public_entry_uses_fast_path_on_cpu():
    t = case_inputs("float64", 2, 4, 10, 3)[0]
    kw = dict(D=t["D"], z=t["z"], delta_bias=t["delta_bias"], delta_softplus=True)
    args = [t[k] for k in ("u", "delta", "A", "B", "C")]
    torch.testing.assert_close(selective_scan(*args, **kw), selective_scan_torch(*args, **kw), rtol=0, atol=0)
    torch.testing.assert_close(selective_scan(*args, backend="reference", **kw),
                               selective_scan_ref(*args, **kw), rtol=0, atol=0)


@needs_triton
def test_dispatch_picks_triton_on_cuda():
    if not CUDA:
        pytest.skip("auto picks Triton only for CUDA tensors")
    t = kernel_inputs(1, 8, 16, 4, None, torch.float32)
    out = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], backend="auto")
    ref = selective_scan_ref(t["u"], t["delta"], t["A"], t["B"], t["C"])
    assert rel_err(out, ref) < TOL["triton"][torch.float32]


@needs_triton
def test_triton_float64_keeps_float64_accuracy():
    """The kernels compute in float32; float64 inputs are routed to the float64 path."""
    t = kernel_inputs(1, 4, 13, 4, None, torch.float64)
    t["A"] = t["A"].double()
    out = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"].double(),
                         delta_softplus=True, backend="triton")
    ref = selective_scan_ref(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"].double(),
                             delta_softplus=True)
    assert out.dtype == torch.float64 and rel_err(out, ref) < 1e-12


# ---------------------------------------------------------------- the chunked torch path's own pieces


def check_chunked(t, softplus=True):
    """:func:`check` of the chunked path on "float64" inputs t."""
    check("torch", t, *float64_upstream(t), softplus=softplus)


make_inputs = selective_scan_inputs  # "float64" inputs on the CPU (see case_inputs)


@pytest.mark.parametrize("groups", [None, 2], ids=["ungrouped", "g2"])
def test_chunked_float64(groups, small_chunks):
    small_chunks(200)
    check_chunked(make_inputs(2, 4, 29, 6, groups, dtype=torch.float64))


@pytest.mark.parametrize("batch,groups", [pytest.param(2, None, id="b2"), pytest.param(5, 2, id="b5g2")])
def test_batch_split_across_threads(batch, groups, small_chunks, monkeypatch):
    """Force the batch to be split over worker threads (uneven slices for batch 5)."""
    small_chunks(150)
    monkeypatch.setattr(cpu, "_workers", cpu.cpu_workers())  # restored after the test
    cpu.set_cpu_workers(3)
    monkeypatch.setattr(fast, "_MIN_WORK_PER_WORKER", 1)
    check_chunked(make_inputs(batch, 4, 23, 3, groups))
    check_chunked(make_inputs(batch, 4, 23, 3, groups, h0=False))


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3), dim_per_group=st.integers(1, 4), groups=st.sampled_from([None, 1, 2]),
    L=st.integers(1, 40), n=st.integers(1, 9), chunk_elems=st.sampled_from([1, 37, 1 << 20]),
    D=st.booleans(), z=st.booleans(), bias=st.booleans(), h0=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(batch=1, dim_per_group=1, groups=None, L=21, n=1, chunk_elems=1, D=True, z=True, bias=True,
         h0=True, seed=1)  # a last state of 0.0042 from terms of ~0.1-1 (see check)
def test_chunked_random_configurations(batch, dim_per_group, groups, L, n, chunk_elems, D, z, bias, h0, seed):
    dim = dim_per_group * (groups or 1)
    old = fast._CHUNK_ELEMS
    fast._CHUNK_ELEMS = chunk_elems  # hypothesis does not mix with function fixtures
    try:
        check_chunked(make_inputs(batch, dim, L, n, groups, D=D, z=z, bias=bias, h0=h0, seed=seed))
    finally:
        fast._CHUNK_ELEMS = old


def test_chunked_backward_twice_with_retain_graph():
    t = {k: None if v is None else v.requires_grad_() for k, v in make_inputs(2, 4, 9, 3).items()}
    out = selective_scan_torch(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                               delta_bias=t["delta_bias"], delta_softplus=True,
                               initial_state=t["initial_state"])
    first = torch.autograd.grad(out.sum(), list(t.values()), retain_graph=True)
    second = torch.autograd.grad(out.sum(), list(t.values()))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_chunked_thread_setting_restored():
    before = torch.get_num_threads()
    t = {k: None if v is None else v.requires_grad_() for k, v in make_inputs(1, 4, 5, 2).items()}
    selective_scan_torch(t["u"], t["delta"], t["A"], t["B"], t["C"]).sum().backward()
    assert torch.get_num_threads() == before


def test_chunked_zero_length():
    t = make_inputs(2, 3, 0, 4)
    out, last = selective_scan_torch(t["u"], t["delta"], t["A"], t["B"], t["C"],
                                     initial_state=t["initial_state"], return_last_state=True)
    assert out.shape == (2, 3, 0)
    torch.testing.assert_close(last, t["initial_state"])


def test_reference_gradcheck():
    t = make_inputs(2, 3, 5, 2, groups=None, dtype=torch.float64)

    def f(*args):
        kw = dict(zip(GRAD_NAMES, args))
        return selective_scan_ref(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], D=kw["D"],
                                  z=kw["z"], delta_bias=kw["delta_bias"], delta_softplus=True,
                                  return_last_state=True, initial_state=kw["initial_state"])

    assert torch.autograd.gradcheck(f, [t[k].requires_grad_() for k in GRAD_NAMES])
    grouped = make_inputs(1, 4, 4, 2, groups=2, dtype=torch.float64, D=False, z=False, bias=False, h0=False)
    args = [grouped[k].requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    assert torch.autograd.gradcheck(lambda *a: selective_scan_ref(*a), args)


def test_chunked_gradcheck(small_chunks):
    """The hand-written backward is exact: gradcheck it in float64 across chunks."""
    small_chunks(12)
    t = make_inputs(2, 4, 6, 3, groups=2, dtype=torch.float64)

    def f(u, delta, A, B, C, h0):
        return selective_scan_torch(u, delta, A, B, C, delta_softplus=True,
                                    return_last_state=True, initial_state=h0)

    args = [t[k].requires_grad_() for k in ("u", "delta", "A", "B", "C", "initial_state")]
    # fast_mode compares random projections of the Jacobian (any wrong entry shows up in
    # them almost surely) with far fewer calls than the full Jacobian.
    assert torch.autograd.gradcheck(f, args, fast_mode=True)


# ---------------------------------------------------------------- the Triton kernels' own pieces


def check_triton(batch, dim, L, n, groups, dtype, *, softplus=True, last=False, seed=0, forward=None,
                 segment=None, **opts):
    """:func:`check` of the kernels on "float32" inputs, with :func:`config_for`'s
    configuration (``forward``, ``segment``)."""
    t, dout, dlast = case_inputs("float32", batch, dim, L, n, groups, dtype, seed=seed, device=TRITON_DEVICE,
                                 **{"h0": False, **opts})
    check("triton", t, dout, dlast, softplus=softplus, last=last,
          config=config_for(t, True, forward, **(segment or {})))


def check_forward(batch, dim, L, n, groups, dtype, *, softplus=True, seed=0, forward="segment",
                  segment=None, **opts):
    """Forward only (no autograd: the segments need not be the backward's chunks):
    output and last state against the float64 oracle, by default through the segment
    forward (``forward``, ``segment``: as in :func:`check_triton`)."""
    t = kernel_inputs(batch, dim, L, n, groups, dtype, seed=seed, **opts)
    args = {k: v for k, v in t.items() if k not in ("u", "delta", "A", "B", "C")}
    config = config_for(t, False, forward, **(segment or {}))
    with torch.no_grad():
        out, last = BACKENDS["triton"](t["u"], t["delta"], t["A"], t["B"], t["C"], **args,
                                          delta_softplus=softplus, return_last_state=True,
                                          config=config)
        t64 = to64(t)
        r_out, r_last = selective_scan_ref(
            t64["u"], t64["delta"], t64["A"], t64["B"], t64["C"],
            **{k: t64[k] for k in args}, delta_softplus=softplus, return_last_state=True)
    assert out.dtype == dtype and out.shape == (batch, dim, L)
    assert last.dtype == torch.float32 and last.shape == (batch, dim, n)
    tol = TOL["triton"][dtype]
    errors = {"out": rel_err(out, r_out), "last_state": rel_err(last, r_last)}
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"tolerance {tol:g} exceeded: {bad}"


@needs_triton
@pytest.mark.parametrize("variant", ["lane", "segment"])
def test_forward_variants(variant):
    """Both forward kernels, each followed by the lane backward, agree with the oracle."""
    check_triton(1, 32, 29, 16, 2, torch.float32, last=True, h0=True, seed=7, forward=variant)
    if CUDA:
        check_triton(2, 256, 1500, 16, 2, torch.bfloat16, seed=8, forward=variant)


# Segmented forward ("segment"): (batch, dim, L, n, groups). Segments of 8 steps on the
# interpreter (the default 64 on a GPU): L shorter than a segment, a multiple
# of it, odd tails; batch 1; d_state 1, 5, 16; grouped B/C; dim not a multiple of the
# channel block.
SEG_SHAPES = [
    (2, 4, 37, 16, None),
    (1, 3, 5, 4, None),
    (1, 8, 70, 5, 2),
    (1, 6, 16, 1, 3),
    (2, 40, 23, 16, 2),
]
if CUDA:
    SEG_SHAPES += [(2, 256, 1000, 16, None), (3, 192, 4099, 16, 2), (1, 1536, 2048, 16, None)]


@needs_triton
@pytest.mark.parametrize("prefetch", [False, True], ids=["load", "prefetch"])
@pytest.mark.parametrize("shape", SEG_SHAPES, ids=shape_id)
def test_segment_forward(shape, prefetch):
    check_forward(*shape, dtype=torch.float32, h0=True, segment=dict(prefetch=prefetch))
    check_forward(*shape, dtype=torch.float32, seed=1,          # no initial state
                  segment=dict(prefetch=prefetch))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_segment_low_precision(dtype):
    # 16-step segments on the interpreter: two x tiles of 8 (one 16-byte vector) each.
    check_forward(2, 8, 45, 16, None, dtype, h0=True, seed=3,
                  segment=None if CUDA else dict(steps=16))
    check_triton(2, 4, 45, 16, None, dtype, last=True, h0=True, seed=3, forward="segment")


SEGMENT_OPTIONS = [  # which optional inputs are given
    pytest.param(dict(D=False, z=False, bias=False, softplus=False), id="bare"),
    pytest.param(dict(D=True, z=False, bias=True, softplus=True), id="D-bias-softplus"),
    pytest.param(dict(D=False, z=True, bias=False, softplus=True, h0=True), id="z-h0-softplus"),
]


@needs_triton
@pytest.mark.parametrize("opts", SEGMENT_OPTIONS)
@pytest.mark.parametrize("prefetch", [False, True], ids=["load", "prefetch"])
def test_segment_optional_arguments(opts, prefetch):
    opts = dict(opts)
    softplus = opts.pop("softplus")
    seg = dict(prefetch=prefetch)
    check_forward(1, 4, 33, 8, None, torch.float32, softplus=softplus, segment=seg, **opts)
    check_triton(1, 4, 33, 8, None, torch.float32, softplus=softplus, last=True, forward="segment",
                 segment=seg, **opts)


@needs_triton
@pytest.mark.parametrize("shape", [(2, 4, 37, 16, None), (1, 8, 70, 5, 2), (1, 3, 5, 1, None)], ids=shape_id)
def test_segment_forward_backward(shape):
    """Through the autograd Function: segment forward (segments = the lane backward's
    chunks, whose checkpoints are the segment carries), lane backward."""
    check_triton(*shape, dtype=torch.float32, last=True, h0=True, forward="segment")
    check_triton(*shape, dtype=torch.float32, seed=2, forward="segment")


@needs_triton
def test_segment_tiles_and_large_state():
    """Other segment tiles (B/C vectors of 1 and 4 steps, 8-step x tiles in float32,
    1-warp programs), and d_state above SEGMENT_MAX_STATE: the lane forward by default,
    the segment kernel when asked for."""
    check_forward(1, 40, 29, 16, 2, torch.float32, seed=5, segment=dict(bc_steps=1, channels=32))
    check_forward(2, 4, 29, 4, None, torch.float32, seed=6, segment=dict(bc_steps=4, x_steps=8))
    if CUDA:
        # The lane forward at a small d_state: the segment kernel keeps d_state values per
        # thread, and at 64 of them the GPU compiler ran for minutes (triton 3.6, seen in
        # make_ttgir on an H100); the interpreter below covers 64 itself.
        check_forward(1, 4, 11, 16, 4, torch.float32, seed=7, forward="lane")
        return
    check_forward(1, 4, 11, 64, 4, torch.float32, seed=7, forward=None)   # default: lane
    check_forward(1, 2, 11, 64, None, torch.float32, seed=7)              # segment kernel


def _inputs_like(batch, dim, L, n, groups, dtype):
    """Empty u, A, B of these sizes: what default_config reads."""
    bc = (batch, n, L) if groups is None else (batch, groups, n, L)
    return (torch.empty(batch, dim, L, dtype=dtype), torch.empty(dim, n), torch.empty(bc, dtype=dtype))


# (batch, dim, L, n, groups, dtype, need_grad) -> the configuration the scan has run with
# by default since its tiles were timed (benchmarks/RESULTS.md): lane tiles (4, 4, 256)
# without a gradient, (16, 4, 64) with one, (8, 4, 128) with one at batch * dim <= 2048,
# channels halved until they divide a group, steps at least d_state; 64-step segments
# without a gradient (the lane tile with one) of min(128, dim) channels, 16-byte x
# tiles, 2-step B/C vectors, prefetch for 4-byte inputs; the lane forward above
# d_state 32.
DEFAULTS = [
    ((8, 1536, 2048, 16, None, BF16, False), ("segment", (4, 4, 256), (64, 128, 8, 2, False))),
    ((8, 1536, 2048, 16, None, BF16, True), ("segment", (16, 4, 64), (64, 128, 8, 2, False))),
    ((1, 1536, 65536, 16, None, FP32, True), ("segment", (8, 4, 128), (128, 128, 4, 2, True))),
    ((2, 1024, 100, 16, None, FP32, True), ("segment", (8, 4, 128), (128, 128, 4, 2, True))),
    ((2, 1030, 100, 16, None, FP32, True), ("segment", (2, 4, 64), (64, 128, 4, 2, True))),
    ((1, 24, 50, 32, 3, torch.float16, True), ("segment", (8, 4, 128), (128, 32, 8, 2, False))),
    ((1, 6, 50, 33, 3, FP32, False), ("lane", (2, 4, 256), (64, 8, 4, 2, True))),
    ((4, 1536, 50, 64, None, BF16, True), ("lane", (16, 4, 64), (64, 128, 8, 2, False))),
    ((4, 1536, 50, 256, None, BF16, True), ("lane", (16, 4, 256), (256, 128, 8, 2, False))),
]


@pytest.mark.parametrize("sizes,expected", DEFAULTS, ids=[
    "x".join(map(str, s[:4])) + f"g{s[4]}-{str(s[5])[6:]}" + ("-grad" if s[6] else "") for s, _ in DEFAULTS])
def test_default_config(sizes, expected):
    *shape, dtype, need_grad = sizes
    forward, lane, seg = expected
    cfg = default_config(*_inputs_like(*shape, dtype), need_grad)
    assert cfg == ScanConfig(forward, LaneTiles(*lane), SegmentTiles(*seg))
    cfg.check(shape[1] // (shape[4] or 1), shape[3], need_grad)


@needs_triton
def test_config_checks():
    """A configuration the kernels cannot run is refused before any launch."""
    t = kernel_inputs(1, 4, 9, 4, None, torch.float32)
    cfg = config_for(t, True)
    bad = [replace(cfg, forward="tile"),
           replace(cfg, lane=replace(cfg.lane, channels=8)),        # more than dim / groups
           replace(cfg, lane=replace(cfg.lane, steps=2)),           # < d_state
           replace(cfg, forward="segment", segment=replace(cfg.segment, steps=8)),  # != lane
           replace(cfg, segment=replace(cfg.segment, x_steps=8, bc_steps=16))]
    for c in bad:
        with pytest.raises(ValueError):
            BACKENDS["triton"](t["u"].requires_grad_(), t["delta"], t["A"], t["B"], t["C"],
                                  config=c)


# Strided layouts: the lane / segment kernels read every tensor through its own strides
# (only time must be contiguous) and write each gradient in its input's layout, so views
# as Mamba produces them are never copied. Each input is rebuilt as a view of a leaf that
# stores it differently:
#   "bm": u and z the two halves of one (b, 2d, L) tensor (``.chunk``); B, C slices of one
#     (b, [g,] r + 2n, L) tensor (x_proj's output, r = 3 rows of dt before them).
#   "fm": the same groupings stored feature-major, (features, b, L): Mamba's W @ h^T
#     over b*L tokens (batch stride L, channel stride b*L).
#   "contig": its own contiguous tensor; "tl": the transpose of (b, L, d) storage (time
#     strided: the backend's copy fallback); "pad": a slice of (b, d, L + 3) (time
#     contiguous, not dense).
# Per case: u, z, delta, B, C, and the layout of the incoming gradient dout.
LAYOUTS = {
    # Mamba's Triton path: u the conv output, delta a bmm output, z half of the
    # feature-major in_proj output, B/C slices of x_proj's output, dout from out_proj.
    "mamba": dict(u="contig", z="fm", delta="contig", B="bm", C="bm", dout="fm"),
    "chunks": dict(u="bm", z="bm", delta="tl", B="bm", C="bm", dout="fm"),
    "feature_major": dict(u="fm", z="fm", delta="fm", B="fm", C="fm", dout="tl"),
    # Every (b, d, L) tensor, and B vs C, in a different layout (catches mixed-up strides).
    "mixed": dict(u="fm", z="bm", delta="contig", B="fm", C="contig", dout="pad"),
}


def _relaid(x, how):
    """(leaf, view of it equal to x) for a (b, f, L) tensor x stored as ``how``."""
    if how == "contig":
        leaf = x.contiguous()
        return leaf, lambda t: t
    if how == "fm":
        leaf = x.permute(1, 0, 2).contiguous()
        return leaf, lambda t: t.permute(1, 0, 2)
    if how == "tl":
        leaf = x.transpose(1, 2).contiguous()
        return leaf, lambda t: t.transpose(1, 2)
    assert how == "pad"
    leaf = torch.cat([x, torch.zeros_like(x[..., :3])], -1)
    return leaf, lambda t: t[..., :x.shape[-1]]


def laid_out(t, spec):
    """Leaves, and a function of the leaves (or of their gradients) giving the views of
    u, z, delta, B, C laid out as ``spec`` says, with t's values."""
    u, z, B, C, delta = t["u"], t["z"], t["B"], t["C"], t["delta"]
    dim = u.shape[1]
    leaves, views = {}, {}
    # u and z: halves of one (b, 2d, L) tensor stored "bm" or "fm"; either may instead be
    # a tensor of its own (that half of the pair then only pads).
    xz = torch.cat([u, z], 1)
    pair_fm = "fm" in (spec["u"], spec["z"])
    leaves["xz"], xz_view = _relaid(xz, "fm" if pair_fm else "contig")
    for k, half in (("u", slice(0, dim)), ("z", slice(dim, 2 * dim))):
        if spec[k] in ("bm", "fm"):
            views[k] = lambda lv, half=half: xz_view(lv["xz"])[:, half]
        else:
            leaves[k], f = _relaid(t[k], spec[k])
            views[k] = lambda lv, k=k, f=f: f(lv[k])
    leaves["delta"], f_dt = _relaid(delta, spec["delta"])
    views["delta"] = lambda lv: f_dt(lv["delta"])
    # B, C: slices of (b, [g,] 3 + 2n, L), the group axis folded into features for "fm",
    # or (spec "contig") a tensor of its own.
    n_axis = B.dim() - 2
    n = B.shape[n_axis]
    dt_rows = torch.zeros_like(B.narrow(n_axis, 0, 1)).expand(*B.shape[:n_axis], 3, B.shape[-1])
    xdbl = torch.cat([dt_rows, B, C], n_axis)
    flat = xdbl.reshape(xdbl.shape[0], -1, xdbl.shape[-1])    # (b, [g *] (3 + 2n), L)
    for k, start in (("B", 3), ("C", 3 + n)):
        if spec[k] == "contig":
            leaves[k] = t[k].contiguous()
            views[k] = lambda lv, k=k: lv[k]
        else:
            name = "xdbl_" + spec[k]
            if name not in leaves:
                leaves[name], f_bc = _relaid(flat, "fm" if spec[k] == "fm" else "contig")
            views[k] = lambda lv, name=name, f=f_bc, start=start: (
                f(lv[name]).view(xdbl.shape).narrow(n_axis, start, n))
    return leaves, lambda lv: {k: fn(lv) for k, fn in views.items()}


def check_laid_out(batch, dim, L, n, groups, dtype, layout, forward, seed=0):
    spec = LAYOUTS[layout]
    t, dout, dlast = case_inputs("float32", batch, dim, L, n, groups, dtype, h0=True, seed=seed,
                                 device=TRITON_DEVICE)
    leaves, views = laid_out(t, spec)
    leaves = {k: lf.detach().requires_grad_(True) for k, lf in leaves.items()}
    others = {k: t[k].detach().clone().requires_grad_(True)
              for k in ("A", "D", "delta_bias", "initial_state")}
    v = views(leaves)
    for k in ("u", "z", "delta", "B", "C"):               # the views hold t's values
        assert torch.equal(v[k], t[k]), k
    # Record the layout in which each input's gradient arrives.
    arrived = {}
    for k in ("u", "z", "delta"):
        v[k].register_hook(lambda grad, k=k: arrived.__setitem__(k, grad.stride()))
    out, last = BACKENDS["triton"](
        v["u"], v["delta"], others["A"], v["B"], v["C"], D=others["D"], z=v["z"],
        delta_bias=others["delta_bias"], delta_softplus=True, return_last_state=True,
        initial_state=others["initial_state"], config=config_for(t, True, forward))
    # out is laid out like z when z is dense (e.g. feature-major), else contiguous: what
    # torch.empty_like gives (a batch-1 slice is dense too).
    assert out.stride() == torch.empty_like(v["z"]).stride()
    g_leaf, f_out = _relaid(dout.to(dtype), spec["dout"])
    g_out = f_out(g_leaf)                                  # dout's values, in spec's layout
    torch.autograd.backward([out, last], [g_out, dlast.float()])
    for k in ("u", "z", "delta"):  # each gradient written in its input's layout (dense inputs)
        x = v[k] if v[k].stride(-1) == 1 else v[k].contiguous()   # "tl": copied
        assert arrived[k] == torch.empty_like(x).stride(), (k, arrived[k])

    # The oracle, on the same values; dout as rounded to the input dtype.
    r_out, r_last, r_grads = run("reference", to64(t), g_out.double(), dlast)
    grads = views({k: lf.grad for k, lf in leaves.items()})
    grads.update({k: o.grad for k, o in others.items()})
    errors = {"out": rel_err(out, r_out), "last_state": rel_err(last, r_last)}
    for k, ref_g in r_grads.items():
        errors["d" + k] = rel_err(grads[k], ref_g)
    tol = TOL["triton"][dtype]
    bad = {k: e for k, e in errors.items() if not e < tol}
    assert not bad, f"tolerance {tol:g} exceeded: {bad} (all: {errors})"


@needs_triton
@pytest.mark.parametrize("variant,layout", [("lane", k) for k in LAYOUTS] + [("segment", "mamba")])
def test_strided_layouts(layout, variant):
    """Strided views (see LAYOUTS) through both forward kernels (each with the lane
    backward) against the float64 oracle: fp32, and for the lane kernels in the Mamba
    and mixed layouts also bf16 and grouped B/C."""
    check_laid_out(2, 4, 37, 4, None, torch.float32, layout, variant)
    if variant == "lane" and layout in ("mamba", "mixed"):
        check_laid_out(2, 4, 29, 4, None, torch.bfloat16, layout, variant, seed=4)
        check_laid_out(1, 8, 21, 4, 2, torch.float32, layout, variant, seed=2)


@needs_triton
@pytest.mark.parametrize("layout", ["mamba"])
def test_compile_op_strides(layout):
    """The torch.compile op (``ops/_library.py``) on the Triton backend: its fake kernel
    predicts the strides the kernels give out (like z), so the op's real kernel returns
    the backend's out as is instead of copying it into the fake's layout."""
    from mimetic.ops import _library

    t = kernel_inputs(2, 4, 19, 4, None, torch.float32, h0=True, seed=5)
    leaves, views = laid_out(t, LAYOUTS[layout])
    v = views(leaves)
    args = (v["u"], v["delta"], t["A"], v["B"], v["C"], t["D"], v["z"], t["delta_bias"],
            t["initial_state"], True, True, "triton")
    fake_out, *_ = _library._ss_fake(*args)  # out, last state, checkpoints
    out, _ = selective_scan(*args[:5], D=t["D"], z=v["z"], delta_bias=t["delta_bias"],
                            initial_state=t["initial_state"], delta_softplus=True,
                            return_last_state=True, backend="triton")
    assert out.stride() == fake_out.stride()
    torch.library.opcheck(torch.ops.mimetic.selective_scan, args,
                          test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------- the Mamba layer on Triton
# Mamba._forward feeds the scan the views above ("mamba" layout) through its own
# projections (one feature-major GEMM for x and z with a custom backward, batched GEMMs
# for x_proj / dt_proj, out_proj as one GEMM over the tokens). Checked end to end
# against the layer written out plainly in float64 with the sequential references.


def mamba_reference(layer, h, cache_len=None):
    """The layer's output, its parameters' and input's gradients of sum(out * g), in
    float64; with ``cache_len`` also the final conv / SSM states."""
    import torch.nn.functional as F

    from mimetic.ops.causal_conv1d.reference import causal_conv1d_ref

    p = {k: v.detach().double().requires_grad_(True) for k, v in layer.named_parameters()}
    h = h.detach().double().requires_grad_(True)
    d, n, r = layer.d_inner, layer.d_state, layer.dt_rank
    xz = F.linear(h, p["in_proj.weight"], p.get("in_proj.bias")).transpose(1, 2)
    x, z = xz[:, :d], xz[:, d:]
    x, conv_state = causal_conv1d_ref(x, p["conv1d.weight"][:, 0], p["conv1d.bias"], "silu",
                                      None, True)
    x_dbl = F.linear(x.transpose(1, 2), p["x_proj.weight"])          # (b, L, r + 2n)
    dt, B, C = x_dbl.split([r, n, n], dim=-1)
    delta = F.linear(dt, p["dt_proj.weight"]).transpose(1, 2)
    y, last = selective_scan_ref(x, delta, -torch.exp(p["A_log"]), B.transpose(1, 2),
                                 C.transpose(1, 2), p["D"], z, p["dt_proj.bias"],
                                 delta_softplus=True, return_last_state=True)
    out = F.linear(y.transpose(1, 2), p["out_proj.weight"], p.get("out_proj.bias"))
    return out, h, p, (conv_state, last)


@needs_triton
@pytest.mark.parametrize("dtype,bias,amp", [
    (torch.float32, True, False), (torch.bfloat16, False, False),
    (torch.float32, False, True)], ids=["fp32-bias", "bf16", "autocast-bf16"])
def test_mamba_layer_triton(dtype, bias, amp, monkeypatch):
    """Output, input gradient and every parameter gradient of the Mamba layer with its
    ops on Triton (as on CUDA: backend "auto" there), against the float64 reference; in
    fp32 also a prefill into a cache (final conv and SSM states). ``amp``: fp32
    parameters under torch.autocast(bfloat16), the projections then run in bf16."""
    import contextlib
    import importlib

    from mimetic.models.cache import SSMState
    from mimetic.modules.mamba import Mamba

    for name in ("selective_scan", "causal_conv1d"):   # "auto" -> Triton, as for CUDA
        mod = importlib.import_module(f"mimetic.ops.{name}")
        orig = mod.resolve_backend
        monkeypatch.setattr(mod, "resolve_backend",
                            lambda b, x, has_triton_kernel=True, _o=orig: _o("triton", x))
    torch.manual_seed(0)
    layer = Mamba(8, d_state=4, bias=bias, device=TRITON_DEVICE, dtype=dtype)
    batch, L = 2, 13
    h = torch.randn(batch, L, 8, device=TRITON_DEVICE, dtype=dtype, requires_grad=True)
    g = torch.randn(batch, L, 8, device=TRITON_DEVICE, dtype=torch.float64)
    ctx = torch.autocast(TRITON_DEVICE, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        out = layer(h)
    (out.double() * g).sum().backward()
    r_out, r_h, r_p, r_states = mamba_reference(layer, h)
    (r_out * g).sum().backward()
    tol = 2e-5 if dtype == torch.float32 and not amp else 3e-2
    errors = {"out": rel_err(out, r_out), "dh": rel_err(h.grad, r_h.grad)}
    errors.update({"d" + k: rel_err(v.grad, r_p[k].grad) for k, v in layer.named_parameters()})
    bad = {k: e for k, e in errors.items() if not e < tol}
    assert not bad, f"tolerance {tol:g} exceeded: {bad} (all: {errors})"

    if dtype == torch.float32 and not amp:   # prefill: final conv inputs and SSM state
        cache = SSMState(*layer.allocate_state(batch, device=TRITON_DEVICE, dtype=dtype))
        with torch.no_grad():
            pre = layer(h, cache=cache)
        assert rel_err(pre, r_out) < tol
        assert rel_err(cache.conv_state, r_states[0]) < tol
        assert rel_err(cache.ssm_state, r_states[1]) < tol


# ---------------------------------------------------------------- input checks


def _valid():
    return make_inputs(2, 4, 6, 3)


@pytest.mark.parametrize("mutate,error,match", [
    (lambda t: t.update(u=t["u"][0]), ValueError, "u must have shape"),
    (lambda t: t.update(delta=t["delta"][:, :, :5]), ValueError, "delta must have shape"),
    (lambda t: t.update(A=t["A"][:3]), ValueError, "A must have shape"),
    (lambda t: t.update(B=t["B"][:, :2]), ValueError, "B must have shape"),
    (lambda t: t.update(C=t["C"].unsqueeze(1).expand(-1, 3, -1, -1)), ValueError, "groups"),
    (lambda t: t.update(B=t["B"][0]), ValueError, "B must be"),
    (lambda t: t.update(B=t["B"].unsqueeze(1).expand(-1, 2, -1, -1)), ValueError,
     "same number of groups"),
    (lambda t: t.update(D=t["D"][:2]), ValueError, "D must have shape"),
    (lambda t: t.update(z=t["z"][:1]), ValueError, "z must have shape"),
    (lambda t: t.update(initial_state=t["initial_state"][:, :, :2]), ValueError, "initial_state"),
    (lambda t: t.update(u=t["u"].long()), TypeError, "u must be a floating"),
    (lambda t: t.update(B=t["B"].int()), TypeError, "B must be a floating"),
    (lambda t: t.update(initial_state=t["initial_state"].long()), TypeError,
     "initial_state must be"),
    (lambda t: t.update(A=t["A"].to(torch.complex64)), TypeError, "A must be"),
    (lambda t: t.update(C=t["C"].to("meta")), ValueError, "one device"),
])
def test_validation_errors(mutate, error, match):
    t = _valid()
    mutate(t)
    with pytest.raises(error, match=match):
        selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                       initial_state=t["initial_state"])


def test_unknown_backend():
    t = _valid()
    with pytest.raises(ValueError, match="backend"):
        selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], backend="cudnn")
