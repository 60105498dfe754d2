"""Mamba-1 selective scan: the fast torch path against the sequential reference.

The oracle is ``selective_scan_ref`` run in float64 on the *same* inputs (bf16/fp16
inputs are rounded first, then upcast), so the tolerances below only cover the fast
path's own float32 arithmetic and the final rounding of its outputs and gradients to
the input dtype. Errors are relative in norm: ||got - ref|| / ||ref||. The decoding step
(``selective_state_update``) is tested in test_selective_state_update.py.
"""
from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mimetic.ops.selective_scan import selective_scan, selective_scan_ref
from mimetic.ops.selective_scan.chunked import selective_scan_torch

from .numerics import rel_err

# ``mimetic.ops.selective_scan`` the attribute is the function; get the module itself.
fast = importlib.import_module("mimetic.ops.selective_scan.chunked")
cpu = importlib.import_module("mimetic.cpu")

# fp32: float32 arithmetic only. bf16/fp16: one rounding of each result to the input
# dtype, whose unit roundoff is 2^-8 (bf16) / 2^-11 (fp16); we allow twice that.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(batch, dim, L, n, groups=None, dtype=torch.float32, *, D=True, z=True,
                bias=True, h0=True, seed=0, delta_scale=0.5, A_scale=0.5):
    """Random inputs in the ranges Mamba produces (decays from mild to strong)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    bc = (batch, n, L) if groups is None else (batch, groups, n, L)
    t = dict(
        u=rnd(batch, dim, L), delta=rnd(batch, dim, L, scale=delta_scale) - 1.0,
        A=-torch.exp(rnd(dim, n, scale=A_scale)), B=rnd(*bc), C=rnd(*bc),
        D=rnd(dim) if D else None, z=rnd(batch, dim, L) if z else None,
        delta_bias=rnd(dim, scale=0.3) - 1.0 if bias else None,
        initial_state=rnd(batch, dim, n) if h0 else None,
    )
    return {k: None if v is None else v.to(dtype) for k, v in t.items()}


def run(fn, inputs, softplus, weights):
    """Forward + backward of ``fn`` on leaf copies of ``inputs``.

    Returns (out, last_state, grads) with grads by input name; the loss weighs both
    outputs by fixed random weights so every gradient path is exercised."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_()
              for k, v in inputs.items()}
    out, last = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
                   D=leaves["D"], z=leaves["z"], delta_bias=leaves["delta_bias"],
                   delta_softplus=softplus, return_last_state=True,
                   initial_state=leaves["initial_state"])
    loss = (out.double() * weights[0].double()).sum() + (last.double() * weights[1].double()).sum()
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return out, last, grads


def check_against_reference(inputs, softplus=True):
    """Run the torch path on ``inputs`` and the float64 reference on the same values."""
    dtype = inputs["u"].dtype
    batch, dim, _ = inputs["u"].shape
    # Same upstream gradient for both: the one the low-precision output can carry.
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(inputs["u"].shape, generator=g).to(dtype),
         torch.randn(batch, dim, inputs["A"].shape[1], generator=g))
    out, last, grads = run(selective_scan_torch, inputs, softplus, weights=w)
    ref64 = {k: None if v is None else v.double() for k, v in inputs.items()}
    r_out, r_last, r_grads = run(selective_scan_ref, ref64, softplus, weights=w)

    assert out.dtype == dtype
    assert last.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = TOL[dtype]
    assert rel_err(out, r_out) < tol
    # The last state is a sum of terms exp(A sum delta) delta_s B_s u_s (+ the decayed h0) that
    # can cancel to far below their own size (hypothesis found 0.0042 from terms of ~0.1-1), so
    # its error is measured against the size of those terms: the same sum of their absolute
    # values, from the reference. Round-off is relative to the terms, not to what is left.
    terms = {**ref64, "u": ref64["u"].abs(), "B": ref64["B"].abs(),
             "initial_state": None if ref64["initial_state"] is None else ref64["initial_state"].abs()}
    _, scale, _ = run(selective_scan_ref, terms, softplus, weights=w)
    state_err = ((last.double() - r_last).norm() / scale.double().norm().clamp_min(1e-30)).item()
    assert torch.isfinite(last).all() and last.shape == r_last.shape
    assert state_err < TOL[torch.float64 if dtype == torch.float64 else torch.float32]
    assert grads.keys() == r_grads.keys()
    for name in grads:
        assert grads[name].dtype == inputs[name].dtype, name
        err = rel_err(grads[name], r_grads[name])
        assert err < tol, f"grad of {name}: relative error {err:.2e} >= {tol:.0e}"


@pytest.fixture
def small_chunks(monkeypatch):
    """Force several chunks (and a ragged last one) even at test sizes."""
    def set_elems(elems):
        monkeypatch.setattr(fast, "_CHUNK_ELEMS", elems)
    return set_elems


@pytest.mark.parametrize("batch,dim,L,n,groups", [
    (2, 4, 1, 3, None),      # a single step
    (1, 3, 7, 5, None),      # batch 1, odd sizes
    (2, 6, 33, 1, None),     # d_state 1
    (2, 4, 65, 16, 2),       # groups
    (1, 8, 40, 128, 8),      # d_state 128, one channel per group
    (2, 5, 257, 4, None),    # long-ish, prime-ish length
])
@pytest.mark.parametrize("chunk_elems", [1 << 20, 100])
def test_matches_reference_fp32(batch, dim, L, n, groups, chunk_elems, small_chunks):
    small_chunks(chunk_elems)
    check_against_reference(make_inputs(batch, dim, L, n, groups))


@pytest.mark.parametrize("batch,groups", [(2, None), (5, 2)])
def test_batch_split_across_threads(batch, groups, small_chunks, monkeypatch):
    """Force the batch to be split over worker threads (uneven slices for batch 5)."""
    small_chunks(150)
    monkeypatch.setattr(cpu, "_workers", cpu.cpu_workers())  # restored after the test
    cpu.set_cpu_workers(3)
    monkeypatch.setattr(fast, "_MIN_WORK_PER_WORKER", 1)
    check_against_reference(make_inputs(batch, 4, 23, 3, groups))
    inputs = make_inputs(batch, 4, 23, 3, groups, h0=False)
    check_against_reference(inputs)


@pytest.mark.parametrize("D,z,bias,h0,softplus", [
    (False, False, False, False, False),
    (True, False, False, False, True),
    (False, True, True, False, True),
    (False, False, False, True, False),
    (True, True, True, True, True),
])
def test_optional_inputs(D, z, bias, h0, softplus, small_chunks):
    small_chunks(64)  # chunks of a few steps
    inputs = make_inputs(2, 4, 19, 3, D=D, z=z, bias=bias, h0=h0)
    if not softplus:
        inputs["delta"] = inputs["delta"].abs()  # raw delta must be >= 0 to decay
    check_against_reference(inputs, softplus=softplus)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("groups", [None, 2])
def test_other_dtypes(dtype, groups, small_chunks):
    small_chunks(200)
    check_against_reference(make_inputs(2, 4, 29, 6, groups, dtype=dtype))


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3), dim_per_group=st.integers(1, 4), groups=st.sampled_from([None, 1, 2]),
    L=st.integers(1, 40), n=st.integers(1, 9), chunk_elems=st.sampled_from([1, 37, 1 << 20]),
    D=st.booleans(), z=st.booleans(), bias=st.booleans(), h0=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(batch=1, dim_per_group=1, groups=None, L=21, n=1, chunk_elems=1, D=True, z=True, bias=True,
         h0=True, seed=1)  # a last state of 0.0042 from terms of ~0.1-1 (see check_against_reference)
def test_random_configurations(batch, dim_per_group, groups, L, n, chunk_elems, D, z, bias,
                               h0, seed):
    dim = dim_per_group * (groups or 1)
    old = fast._CHUNK_ELEMS
    fast._CHUNK_ELEMS = chunk_elems  # hypothesis does not mix with function fixtures
    try:
        check_against_reference(make_inputs(batch, dim, L, n, groups, D=D, z=z, bias=bias,
                                            h0=h0, seed=seed))
    finally:
        fast._CHUNK_ELEMS = old


def test_no_overflow_with_huge_decay_and_long_sequences(small_chunks):
    """delta * |A| up to ~200 and 600 steps: decays underflow to exactly 0, never inf/NaN
    (cumulative sums of log-decays reach -3e4 here, so exp(-cumsum) would overflow)."""
    small_chunks(4096)
    inputs = make_inputs(1, 3, 600, 4, delta_scale=4.0, A_scale=2.0, bias=False)
    inputs["delta"] = inputs["delta"] + 5.0  # delta * |A| up to ~200 (measured)
    check_against_reference(inputs)


@pytest.mark.parametrize("layout", ["bdl", "bld", "lbd"])
def test_memory_layouts_and_inputs_left_alone(layout):
    """Mamba passes transposed views of (b, L, d) tensors; the fast path picks its copy
    strategy by layout (and may alias an already step-major input), so check every
    layout gives the reference's answer and leaves the caller's tensors untouched."""
    inputs = make_inputs(2, 6, 11, 3)
    perm = {"bdl": (0, 1, 2), "bld": (0, 2, 1), "lbd": (2, 0, 1)}[layout]
    inv = [perm.index(i) for i in range(3)]
    for name in ("u", "delta", "z"):
        inputs[name] = inputs[name].permute(*perm).contiguous().permute(*inv)
    before = {k: v.clone() for k, v in inputs.items() if v is not None}
    check_against_reference(inputs)
    for k, v in before.items():
        assert torch.equal(inputs[k], v), f"{k} was modified"


def test_backward_twice_with_retain_graph():
    t = {k: None if v is None else v.requires_grad_() for k, v in make_inputs(2, 4, 9, 3).items()}
    out = selective_scan_torch(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                               delta_bias=t["delta_bias"], delta_softplus=True,
                               initial_state=t["initial_state"])
    first = torch.autograd.grad(out.sum(), list(t.values()), retain_graph=True)
    second = torch.autograd.grad(out.sum(), list(t.values()))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_thread_setting_restored():
    before = torch.get_num_threads()
    t = {k: None if v is None else v.requires_grad_() for k, v in make_inputs(1, 4, 5, 2).items()}
    selective_scan_torch(t["u"], t["delta"], t["A"], t["B"], t["C"]).sum().backward()
    assert torch.get_num_threads() == before


def test_zero_length():
    inputs = make_inputs(2, 3, 0, 4)
    out, last = selective_scan_torch(inputs["u"], inputs["delta"], inputs["A"], inputs["B"],
                                     inputs["C"], initial_state=inputs["initial_state"],
                                     return_last_state=True)
    assert out.shape == (2, 3, 0)
    torch.testing.assert_close(last, inputs["initial_state"])


def test_public_entry_uses_fast_path_on_cpu():
    inputs = make_inputs(2, 4, 10, 3)
    kw = dict(D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=True)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    torch.testing.assert_close(selective_scan(*args, **kw), selective_scan_torch(*args, **kw),
                               rtol=0, atol=0)
    torch.testing.assert_close(selective_scan(*args, backend="reference", **kw),
                               selective_scan_ref(*args, **kw), rtol=0, atol=0)


def test_reference_gradcheck():
    inputs = make_inputs(2, 3, 5, 2, groups=None, dtype=torch.float64)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]

    def f(*args):
        kw = dict(zip(names, args))
        return selective_scan_ref(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], D=kw["D"],
                                  z=kw["z"], delta_bias=kw["delta_bias"], delta_softplus=True,
                                  return_last_state=True, initial_state=kw["initial_state"])

    args = [inputs[k].requires_grad_() for k in names]
    assert torch.autograd.gradcheck(f, args)
    grouped = make_inputs(1, 4, 4, 2, groups=2, dtype=torch.float64, D=False, z=False, bias=False,
                          h0=False)
    args = [grouped[k].requires_grad_() for k in ("u", "delta", "A", "B", "C")]
    assert torch.autograd.gradcheck(lambda *a: selective_scan_ref(*a), args)


def test_fast_path_gradcheck(small_chunks):
    """The hand-written backward is exact: gradcheck it in float64 across chunks."""
    small_chunks(12)
    inputs = make_inputs(2, 4, 6, 3, groups=2, dtype=torch.float64)

    def f(u, delta, A, B, C, h0):
        return selective_scan_torch(u, delta, A, B, C, delta_softplus=True,
                                    return_last_state=True, initial_state=h0)

    args = [inputs[k].requires_grad_() for k in ("u", "delta", "A", "B", "C", "initial_state")]
    # fast_mode compares random projections of the Jacobian (any wrong entry shows up in
    # them almost surely) with far fewer calls than the full Jacobian.
    assert torch.autograd.gradcheck(f, args, fast_mode=True)


# ---------------------------------------------------------------- validation


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
