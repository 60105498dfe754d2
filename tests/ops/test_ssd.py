"""Mamba-2 SSD: the chunked torch path against the sequential reference.

The oracle is ``ssd_scan_ref`` in float64 on the *same* inputs (bf16/fp16 inputs are
rounded first), so tolerances cover only the chunked path's float32 arithmetic and the
final rounding of results to the input dtype. Errors are relative in norm.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numerics import rel_err

from mimetic.ops import ssd_state_update
from mimetic.ops.ssd import ssd_scan, ssd_scan_ref
from mimetic.ops.ssd.chunked import segsum, ssd_scan_torch

# fp32: float32 arithmetic only. bf16/fp16: one rounding of each result to the input
# dtype (unit roundoff 2^-8 / 2^-11); we allow twice that.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def make_inputs(batch, L, H, P, G, N, dtype=torch.float32, *, D="head", z=True, bias=True,
                h0=True, seed=0, dt_shift=-1.0, A_scale=0.5):
    """Random inputs in Mamba-2's ranges. D: None, "head" (H,) or "channel" (H, P)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    t = dict(
        x=rnd(batch, L, H, P), dt=rnd(batch, L, H, scale=0.5) + dt_shift,
        A=-torch.exp(rnd(H, scale=A_scale)), B=rnd(batch, L, G, N), C=rnd(batch, L, G, N),
        D=None if D is None else rnd(H) if D == "head" else rnd(H, P),
        z=rnd(batch, L, H, P) if z else None, dt_bias=rnd(H, scale=0.3) if bias else None,
        initial_states=rnd(batch, H, P, N) if h0 else None,
    )
    return {k: None if v is None else v.to(dtype) for k, v in t.items()}


def run(fn, inputs, weights, **kw):
    """Forward + backward on leaf copies; the loss weighs y and the final states."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_()
              for k, v in inputs.items()}
    y, last = fn(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"],
                 D=leaves["D"], z=leaves["z"], dt_bias=leaves["dt_bias"],
                 initial_states=leaves["initial_states"], return_final_states=True, **kw)
    loss = (y.double() * weights[0].double()).sum() + (last.double() * weights[1].double()).sum()
    loss.backward()
    return y, last, {k: v.grad for k, v in leaves.items() if v is not None}


def check_against_reference(inputs, chunk_size, **kw):
    dtype = inputs["x"].dtype
    batch, _, H, P = inputs["x"].shape
    N = inputs["B"].shape[-1]
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(inputs["x"].shape, generator=g).to(dtype),
         torch.randn(batch, H, P, N, generator=g))
    y, last, grads = run(ssd_scan_torch, inputs, w, chunk_size=chunk_size, **kw)
    ref64 = {k: None if v is None else v.double() for k, v in inputs.items()}
    r_y, r_last, r_grads = run(ssd_scan_ref, ref64, w, **kw)

    fp = torch.float64 if dtype == torch.float64 else torch.float32
    assert y.dtype == dtype and last.dtype == fp
    assert rel_err(y, r_y) < TOL[dtype]
    assert rel_err(last, r_last) < TOL[fp]
    assert grads.keys() == r_grads.keys()
    for name in grads:
        assert grads[name].dtype == inputs[name].dtype, name
        if name == "dt_bias":
            # d bias[h] = sum over (batch, L) of d dt[..., h]: a sum that can cancel far
            # below its terms (seen: -5.6e-3 from terms of order 1), where no float32
            # summation is accurate relative to the result. Its error is measured against
            # the sum of the terms' magnitudes, the condition of the sum.
            scale = r_grads["dt"].abs().sum((0, 1)).clamp_min(1e-30)
            err = ((grads[name].double() - r_grads[name]).abs() / scale).max().item()
        else:
            err = rel_err(grads[name], r_grads[name])
        assert err < TOL[dtype], f"grad of {name}: relative error {err:.2e}"


@pytest.mark.parametrize("batch,L,H,P,G,N,chunk", [
    (2, 1, 2, 3, 1, 4, 8),      # a single step
    (1, 7, 2, 2, 2, 3, 4),      # batch 1, 7 = 4 + 3: ragged last chunk
    (2, 33, 4, 3, 2, 1, 8),     # d_state 1, groups
    (1, 40, 2, 4, 1, 128, 16),  # d_state 128
    (2, 64, 4, 2, 4, 5, 16),    # exact multiple of the chunk, one head per group
    (1, 257, 2, 2, 1, 4, 32),   # long-ish and ragged
    (2, 20, 2, 3, 1, 4, 256),   # chunk longer than the sequence
])
def test_matches_reference_fp32(batch, L, H, P, G, N, chunk):
    check_against_reference(make_inputs(batch, L, H, P, G, N), chunk, dt_softplus=True)


@pytest.mark.parametrize("D,z,bias,h0,softplus,limit", [
    (None, False, False, False, False, (0.0, math.inf)),
    ("head", False, True, False, True, (0.0, math.inf)),
    ("channel", True, False, False, True, (0.05, 0.5)),
    (None, False, False, True, False, (0.0, math.inf)),
    ("channel", True, True, True, True, (0.0, 0.8)),
])
def test_optional_inputs(D, z, bias, h0, softplus, limit):
    inputs = make_inputs(2, 19, 4, 3, 2, 5, D=D, z=z, bias=bias, h0=h0)
    if not softplus:
        inputs["dt"] = inputs["dt"].abs()  # raw dt must be >= 0 to decay
    check_against_reference(inputs, 8, dt_softplus=softplus, dt_limit=limit)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_dtypes(dtype):
    check_against_reference(make_inputs(2, 29, 4, 3, 2, 6, dtype=dtype), 8, dt_softplus=True)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3), heads_per_group=st.integers(1, 3), G=st.integers(1, 2),
    L=st.integers(1, 40), P=st.integers(1, 4), N=st.integers(1, 8), chunk=st.integers(1, 17),
    D=st.sampled_from([None, "head", "channel"]), z=st.booleans(), bias=st.booleans(),
    h0=st.booleans(), seed=st.integers(0, 2**16),
)
def test_random_configurations(batch, heads_per_group, G, L, P, N, chunk, D, z, bias, h0, seed):
    inputs = make_inputs(batch, L, heads_per_group * G, P, G, N, D=D, z=z, bias=bias, h0=h0,
                         seed=seed)
    check_against_reference(inputs, chunk, dt_softplus=True)


def test_no_overflow_with_huge_decay_and_long_sequences():
    """dt * |A| up to ~20 over 600 steps in chunks of 256: the in-chunk cumulative
    log-decay reaches ~-3.8e3 (measured), so exp(-cumsum) would overflow; segment sums
    do not."""
    inputs = make_inputs(1, 600, 2, 2, 1, 3, dt_shift=4.0, A_scale=2.0, bias=False)
    check_against_reference(inputs, 256, dt_softplus=True)


def test_segsum_is_stable_and_causal():
    """Segment sums are exact sums of the segment, not differences of long cumsums: in
    float32, cumsum[3] - cumsum[2] would lose -1e-3 to cancellation against -1e4."""
    a = torch.tensor([-1e4, -2.0, -3.0, -1e-3], dtype=torch.float32)
    s = segsum(a)
    for i in range(4):
        for j in range(4):
            if i >= j:
                want = a[j + 1:i + 1].double().sum().float()
                torch.testing.assert_close(s[i, j], want, rtol=1e-6, atol=0)
            else:
                assert s[i, j] == -math.inf
    assert torch.exp(s).isfinite().all()


def test_chunk_size_does_not_change_result():
    inputs = make_inputs(2, 50, 4, 3, 2, 5)
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C")]
    kw = dict(D=inputs["D"], z=inputs["z"], dt_bias=inputs["dt_bias"], dt_softplus=True,
              initial_states=inputs["initial_states"], return_final_states=True)
    y1, s1 = ssd_scan_torch(*args, chunk_size=1, **kw)
    for chunk in (7, 16, 50, 256):
        y, s = ssd_scan_torch(*args, chunk_size=chunk, **kw)
        assert rel_err(y, y1) < TOL[torch.float32] and rel_err(s, s1) < TOL[torch.float32]


def test_zero_length():
    inputs = make_inputs(2, 0, 2, 3, 1, 4)
    y, s = ssd_scan_torch(inputs["x"], inputs["dt"], inputs["A"], inputs["B"], inputs["C"],
                          initial_states=inputs["initial_states"], return_final_states=True)
    assert y.shape == (2, 0, 2, 3)
    torch.testing.assert_close(s, inputs["initial_states"])


def test_public_entry_uses_fast_path_on_cpu():
    inputs = make_inputs(2, 10, 2, 3, 1, 4)
    args = [inputs[k] for k in ("x", "dt", "A", "B", "C")]
    torch.testing.assert_close(ssd_scan(*args, chunk_size=4, dt_softplus=True),
                               ssd_scan_torch(*args, chunk_size=4, dt_softplus=True),
                               rtol=0, atol=0)


def test_reference_gradcheck():
    inputs = make_inputs(1, 4, 2, 2, 1, 2, dtype=torch.float64, D="channel")

    def f(*args):
        kw = dict(zip(NAMES, args))
        return ssd_scan_ref(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], D=kw["D"], z=kw["z"],
                            dt_bias=kw["dt_bias"], dt_softplus=True,
                            initial_states=kw["initial_states"], return_final_states=True)

    assert torch.autograd.gradcheck(f, [inputs[k].requires_grad_() for k in NAMES])


def test_fast_path_gradcheck():
    inputs = make_inputs(1, 5, 2, 2, 2, 2, dtype=torch.float64)  # 3 chunks of 2
    names = ("x", "dt", "A", "B", "C", "initial_states")

    def f(x, dt, A, B, C, h0):
        return ssd_scan_torch(x, dt, A, B, C, chunk_size=2, dt_softplus=True, initial_states=h0,
                              return_final_states=True)

    # fast_mode compares random projections of the Jacobian (any wrong entry shows up in
    # them almost surely) with far fewer calls than the full Jacobian.
    assert torch.autograd.gradcheck(f, [inputs[k].requires_grad_() for k in names], fast_mode=True)


# ---------------------------------------------------------------- decoding step


@pytest.mark.parametrize("dtype,D", [(torch.float32, "head"), (torch.bfloat16, "channel")])
def test_state_update_steps_match_scan(dtype, D):
    batch, L, H, P, G, N = 2, 9, 4, 3, 2, 5
    t = make_inputs(batch, L, H, P, G, N, dtype=dtype, D=D)
    limit = (0.0, 0.9)
    ref, ref_last = ssd_scan_ref(
        *(t[k].double() for k in ("x", "dt", "A", "B", "C")), D=t["D"].double(),
        z=t["z"].double(), dt_bias=t["dt_bias"].double(), dt_softplus=True, dt_limit=limit,
        initial_states=t["initial_states"].double(), return_final_states=True)
    state = t["initial_states"].float().clone()
    ys = [ssd_state_update(state, t["x"][:, i], t["dt"][:, i], t["A"], t["B"][:, i],
                           t["C"][:, i], D=t["D"], z=t["z"][:, i], dt_bias=t["dt_bias"],
                           dt_softplus=True, dt_limit=limit) for i in range(L)]
    y = torch.stack(ys, dim=1)
    assert y.dtype == dtype
    assert rel_err(y, ref) < TOL[dtype]
    assert rel_err(state, ref_last) < TOL[torch.float32]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("mutate,error,match", [
    (lambda t: t.update(x=t["x"][0]), ValueError, "x must have shape"),
    (lambda t: t.update(dt=t["dt"][:, :5]), ValueError, "dt must have shape"),
    (lambda t: t.update(A=t["A"][:1]), ValueError, "A must have shape"),
    (lambda t: t.update(B=t["B"][0]), ValueError, "B must have shape"),
    (lambda t: t.update(C=t["C"][..., :2]), ValueError, "C must have shape"),
    (lambda t: t.update(B=t["B"].expand(-1, -1, 3, -1), C=t["C"].expand(-1, -1, 3, -1)),
     ValueError, "ngroups"),
    (lambda t: t.update(D=t["D"][:1]), ValueError, "D must have shape"),
    (lambda t: t.update(z=t["z"][:, :, :1]), ValueError, "z must have shape"),
    (lambda t: t.update(initial_states=t["initial_states"][..., :1]), ValueError, "initial_states"),
    (lambda t: t.update(x=t["x"].long()), TypeError, "x must be a floating"),
    (lambda t: t.update(dt=t["dt"].int()), TypeError, "dt must be a floating"),
    (lambda t: t.update(initial_states=t["initial_states"].long()), TypeError,
     "initial_states must be"),
    (lambda t: t.update(B=t["B"].to("meta")), ValueError, "one device"),
])
def test_validation_errors(mutate, error, match):
    t = make_inputs(2, 6, 4, 3, 1, 5)
    mutate(t)
    with pytest.raises(error, match=match):
        ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                 initial_states=t["initial_states"])


def test_bad_chunk_size():
    t = make_inputs(1, 4, 2, 2, 1, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=0)
