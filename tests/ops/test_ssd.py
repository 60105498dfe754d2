"""The Mamba-2 SSD scan: each backend (the chunked torch path, the Triton kernels) against
the sequential reference, outputs, final states and every gradient; the chunked path's
own pieces (segment sums, chunk size, gradcheck); the input checks. The decoding step is
tested in test_ssd_state_update.py.

The oracle is ``ssd_scan_ref`` in float64 on the *same* inputs (bf16/fp16 inputs are
rounded first), so tolerances cover only the backend's float32 arithmetic (bf16 matmul
operands in the Triton kernels) and the final rounding of results to the input dtype.
Errors are relative in norm.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mimetic.ops.ssd import ssd_scan, ssd_scan_ref
from mimetic.ops.ssd.chunked import chunk_plan, segsum, ssd_scan_torch

from .numerics import (
    CUDA,
    backend_params,
    backward_weighted,
    device_of,
    grads_of,
    leaf_copies,
    randn,
    randn64,
    rel_err,
    ssd_inputs,
    to64,
)

# The chunked torch path. fp32: float32 arithmetic only. bf16/fp16: one rounding of each
# result to the input dtype (unit roundoff 2^-8 / 2^-11); we allow twice that.
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# The Triton kernels: float32 uses exact fp32 matmuls; bf16 feeds the matmuls bf16
# operands (float32 accumulation) and rounds outputs to bf16.
TRITON_TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
make_inputs = ssd_inputs


def run(fn, inputs, weights, **kw):
    """Forward + backward on leaf copies; the loss weighs y and the final states."""
    leaves = leaf_copies(inputs)
    y, last = fn(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"],
                 D=leaves["D"], z=leaves["z"], dt_bias=leaves["dt_bias"],
                 initial_states=leaves["initial_states"], return_final_states=True, **kw)
    backward_weighted((y, last), weights)
    return y, last, grads_of(leaves)


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

    def grad_err(got, name):
        if name == "dt_bias":
            # d bias[h] = sum over (batch, L) of d dt[..., h]: a sum that can cancel far
            # below its terms (seen: -5.6e-3 from terms of order 1), where no float32
            # summation is accurate relative to the result. Its error is measured against
            # the sum of the terms' magnitudes, the condition of the sum.
            scale = r_grads["dt"].abs().sum((0, 1)).clamp_min(1e-30)
            return ((got.double() - r_grads[name]).abs() / scale).max().item()
        return rel_err(got, r_grads[name])

    f_grads = None  # the float32 reference's gradients, run once if a gradient needs them
    for name in grads:
        assert grads[name].dtype == inputs[name].dtype, name
        err = grad_err(grads[name], name)
        if err >= TOL[dtype] and dtype == torch.float32:
            # A sum that cancels (d A[h] adds every (batch, step) term of head h; seen 1.1e-5
            # from a 3 x 11 case) can be ill-conditioned past what any float32 summation
            # reaches: then the backend must be as accurate as the sequential reference run
            # in float32 itself (within 2x, the flash-attention tests' rule).
            if f_grads is None:
                _, _, f_grads = run(ssd_scan_ref, inputs, w, **kw)
            plain = grad_err(f_grads[name], name)
            assert err <= 2 * plain, f"grad of {name}: relative error {err:.2e}, the float32 reference's {plain:.2e}"
        else:
            assert err < TOL[dtype], f"grad of {name}: relative error {err:.2e}"


# ---------------------------------------------------------------- the chunked torch path


@pytest.mark.parametrize("batch,L,H,P,G,N,chunk", [
    pytest.param(2, 1, 2, 3, 1, 4, 8, id="single_step"),
    pytest.param(1, 7, 2, 2, 2, 3, 4, id="ragged_last_chunk"),     # batch 1, 7 = 4 + 3
    pytest.param(2, 33, 4, 3, 2, 1, 8, id="d_state1_groups"),
    pytest.param(1, 40, 2, 4, 1, 128, 16, id="d_state128"),
    pytest.param(2, 64, 4, 2, 4, 5, 16, id="whole_chunks"),        # one head per group
    pytest.param(1, 257, 2, 2, 1, 4, 32, id="long_ragged"),
    pytest.param(2, 20, 2, 3, 1, 4, 256, id="chunk_longer_than_L"),
])
def test_torch_matches_reference_fp32(batch, L, H, P, G, N, chunk):
    check_against_reference(make_inputs(batch, L, H, P, G, N), chunk, dt_softplus=True)


@pytest.mark.parametrize("opts", [
    pytest.param(dict(D=None, z=False, bias=False, h0=False, softplus=False, limit=(0.0, math.inf)), id="bare"),
    pytest.param(dict(D="head", z=False, bias=True, h0=False, softplus=True, limit=(0.0, math.inf)),
                 id="D_head-bias-softplus"),
    pytest.param(dict(D="channel", z=True, bias=False, h0=False, softplus=True, limit=(0.05, 0.5)),
                 id="D_channel-z-softplus-limit"),
    pytest.param(dict(D=None, z=False, bias=False, h0=True, softplus=False, limit=(0.0, math.inf)), id="h0"),
    pytest.param(dict(D="channel", z=True, bias=True, h0=True, softplus=True, limit=(0.0, 0.8)), id="all"),
])
def test_torch_optional_inputs(opts):
    inputs = make_inputs(2, 19, 4, 3, 2, 5, D=opts["D"], z=opts["z"], bias=opts["bias"], h0=opts["h0"])
    if not opts["softplus"]:
        inputs["dt"] = inputs["dt"].abs()  # raw dt must be >= 0 to decay
    check_against_reference(inputs, 8, dt_softplus=opts["softplus"], dt_limit=opts["limit"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_torch_other_dtypes(dtype):
    check_against_reference(make_inputs(2, 29, 4, 3, 2, 6, dtype=dtype), 8, dt_softplus=True)


@settings(max_examples=25, deadline=None)
@example(batch=3, heads_per_group=1, G=1, L=11, P=4, N=7, chunk=1, D=None, z=False, bias=False, h0=True,
         seed=208)  # d A as ill-conditioned as float32 allows: 1.1e-5, the float32 reference's too
@given(
    batch=st.integers(1, 3), heads_per_group=st.integers(1, 3), G=st.integers(1, 2),
    L=st.integers(1, 40), P=st.integers(1, 4), N=st.integers(1, 8), chunk=st.integers(1, 17),
    D=st.sampled_from([None, "head", "channel"]), z=st.booleans(), bias=st.booleans(),
    h0=st.booleans(), seed=st.integers(0, 2**16),
)
def test_torch_random_configurations(batch, heads_per_group, G, L, P, N, chunk, D, z, bias, h0, seed):
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


@pytest.mark.parametrize("L, longest, plan", [(129, 64, (3, 43)), (128, 64, (2, 64)), (1, 64, (1, 1)),
                                              (65, 64, (2, 33)), (20, 256, (1, 20)), (0, 64, (1, 1))])
def test_chunk_plan_pads_less_than_a_step_per_chunk(L, longest, plan):
    nc, T = chunk_plan(L, longest)
    assert (nc, T) == plan and T <= max(longest, 1) and 0 <= nc * T - max(L, 1) < nc


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


# ---------------------------------------------------------------- the Triton kernels


def kernel_inputs(batch, L, H, P, N, G, dtype, D_per_p=False, seed=0, device="cpu"):
    """Inputs of the Triton tests, every optional input given, drawn in float32 on ``device``."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: randn(g, *s, device=device)  # noqa: E731
    return dict(
        x=r(batch, L, H, P).to(dtype), dt=(0.5 * r(batch, L, H) - 1.0).to(dtype),
        A=-torch.exp(0.5 * r(H)), B=r(batch, L, G, N).to(dtype), C=r(batch, L, G, N).to(dtype),
        D=r(H, P) if D_per_p else r(H), z=r(batch, L, H, P).to(dtype),
        dt_bias=0.3 * r(H) - 1.0, initial_states=r(batch, H, P, N),
    )


def run_kernel_case(fn, t, chunk, limit, **kw):
    """(out, final states, gradients of every input) of one forward + backward; the loss
    weighs both outputs with float64 draws of seed 99."""
    leaves = leaf_copies(t)
    out, final = fn(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], chunk,
                    D=leaves["D"], z=leaves["z"], dt_bias=leaves["dt_bias"], dt_softplus=True,
                    dt_limit=limit, initial_states=leaves["initial_states"],
                    return_final_states=True, **kw)
    g = torch.Generator().manual_seed(99)
    dev = out.device
    loss = (out.double() * randn64(g, *out.shape).to(dev)).sum() \
        + (final.double() * randn64(g, *final.shape).to(dev)).sum()
    loss.backward()
    return out, final, grads_of(leaves)


class _NaNEmptyTorch:
    """``torch`` for the kernel module, except that ``empty`` / ``empty_like`` buffers
    come filled with NaN: a kernel that reads an element no kernel wrote fails the test
    (fresh memory is often zero, which would hide it)."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _nan(t):
        return t.fill_(math.nan) if t.is_floating_point() else t

    def empty(self, *args, **kwargs):
        return self._nan(torch.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._nan(torch.empty_like(*args, **kwargs))


@pytest.fixture
def nan_empty(monkeypatch):
    """The Triton SSD module, its unfilled buffers NaN-filled (see _NaNEmptyTorch)."""
    import importlib

    mod = importlib.import_module("mimetic.ops.ssd.triton")
    monkeypatch.setattr(mod, "torch", _NaNEmptyTorch())
    return mod


KERNEL_SHAPES = [  # (batch, L, H, P, N, G, chunk)
    (2, 37, 4, 8, 16, 2, 16),     # several chunks, last one partial
    (1, 150, 2, 16, 32, 1, 128),  # two row blocks inside a chunk
    (1, 5, 3, 4, 8, 3, 16),       # shorter than a chunk, tiny dims (padded tiles)
]
if CUDA:
    KERNEL_SHAPES += [(2, 2048, 24, 64, 128, 1, 256), (1, 1000, 8, 64, 64, 2, 128)]


@pytest.mark.parametrize("backend", backend_params("triton"))
@pytest.mark.parametrize("shape", KERNEL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_matches_reference(backend, shape, dtype, nan_empty):
    batch, L, H, P, N, G, chunk = shape
    t = kernel_inputs(batch, L, H, P, N, G, dtype, D_per_p=(L % 2 == 0), seed=L, device=device_of(backend))
    limit = (0.0, math.inf) if dtype == torch.bfloat16 else (1e-3, 0.5)
    out, final, grads = run_kernel_case(ssd_scan, t, chunk, limit, backend=backend)
    r_out, r_final, r_grads = run_kernel_case(ssd_scan_ref, to64(t), chunk, limit)
    assert out.dtype == dtype and final.dtype == torch.float32
    errs = {"out": rel_err(out, r_out), "final": rel_err(final, r_final)}
    errs.update({"d" + k: rel_err(grads[k], v) for k, v in r_grads.items()})
    tol = TRITON_TOL[dtype]
    assert all(v < tol for v in errs.values()), errs


KERNEL_OPTIONS = [  # which optional inputs are given; the rest are None / off
    pytest.param(dict(), id="bare"),
    pytest.param(dict(D=True), id="D"),
    pytest.param(dict(z=True, final=True), id="z-final"),
    pytest.param(dict(initial_states=True, dt_bias=True, softplus=True), id="initial_states-dt_bias-softplus"),
]


@pytest.mark.parametrize("backend", backend_params("triton"))
@pytest.mark.parametrize("opts", KERNEL_OPTIONS)
def test_triton_optional_inputs(backend, opts, nan_empty):
    """Forward and backward with optional inputs left out (no z, D, bias, initial or
    final state), where the kernels take other code paths."""
    t = kernel_inputs(2, 37, 4, 8, 16, 2, torch.float32, seed=5, device=device_of(backend))
    if not opts.get("softplus"):
        t["dt"] = t["dt"].abs() * 0.3           # positive time steps without softplus
    kw = dict(dt_softplus=bool(opts.get("softplus")),
              return_final_states=bool(opts.get("final")))
    optional = [k for k in ("D", "z", "dt_bias", "initial_states") if opts.get(k)]

    def run_opts(fn, tensors, **extra):
        leaves = leaf_copies({k: tensors[k] for k in ["x", "dt", "A", "B", "C"] + optional})
        res = fn(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], 16,
                 **{k: leaves[k] for k in optional}, **kw, **extra)
        outs = res if kw["return_final_states"] else (res,)
        g = torch.Generator().manual_seed(3)
        backward_weighted(outs, [randn64(g, *o.shape).to(o.device) for o in outs])
        return outs, grads_of(leaves)

    outs, grads = run_opts(ssd_scan, t, backend=backend)
    r_outs, r_grads = run_opts(ssd_scan_ref, to64(t))
    errs = {f"out{i}": rel_err(o, r) for i, (o, r) in enumerate(zip(outs, r_outs))}
    errs.update({"d" + k: rel_err(grads[k], v) for k, v in r_grads.items()})
    assert all(v < TRITON_TOL[torch.float32] for v in errs.values()), errs


TRANSFORMS = [  # the time-step transform's paths
    pytest.param(dict(softplus=False, bias=False, limit=(0.0625, 0.5)), id="clamp"),  # steps exactly at both ends
    pytest.param(dict(softplus=False, bias=True, limit=(0.0625, 0.5)), id="bias-clamp"),
    pytest.param(dict(softplus=True, bias=False, limit=(0.0625, 0.5)), id="softplus-clamp"),  # active at both ends
    # lower end only; softplus inputs > 20 (its threshold)
    pytest.param(dict(softplus=True, bias=True, limit=(0.0625, math.inf)), id="softplus-bias-lower_clamp"),
    pytest.param(dict(softplus=True, bias=False, limit=(0.0, math.inf)), id="softplus"),  # no clamp
    pytest.param(dict(softplus=False, bias=False, limit=(0.0, math.inf)), id="raw"),  # dt used as is
]


@pytest.mark.parametrize("backend", backend_params("triton"))
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_triton_time_step_transform(backend, transform, nan_empty):
    """ddt, d dt_bias and dA through every path of the backward's hand-written time-step
    transform (clamp gradient only where the clamp is inactive, ends included; softplus
    derivative and its threshold), over several chunks with a partial last one, against
    autograd through the float64 reference. Unwritten buffers are NaN (nan_empty)."""
    softplus, bias, limit = transform["softplus"], transform["bias"], transform["limit"]
    dev = device_of(backend)
    t = kernel_inputs(2, 45, 3, 8, 16, 1, torch.float32, seed=11, device=dev)
    g = torch.Generator().manual_seed(12)
    if softplus:   # softplus(x) for x in [-4, 1]: 0.018 .. 1.31, across both clamp ends
        dt = 5.0 * torch.rand(t["dt"].shape, generator=g) - 4.0
        if math.isinf(limit[1]):
            dt[:, ::7, 0] = 100.0  # past F.softplus's threshold (20), and e^x overflows
    else:          # raw dt in [0.01, 0.7], some exactly at the clamp's ends
        dt = 0.69 * torch.rand(t["dt"].shape, generator=g) + 0.01
        dt[:, ::5, 1] = 0.0625
        dt[:, 2::5, 2] = 0.5
    t["dt"] = dt.to(dev)
    names = ["x", "dt", "A", "B", "C", "D", "z"] + (["dt_bias"] if bias else [])
    if bias and not softplus:   # a small bias: dt + bias still spans both clamp ends
        t["dt_bias"] = 0.05 * t["dt_bias"] / t["dt_bias"].abs().max()

    def grads(fn, tensors, **extra):
        leaves = leaf_copies({k: tensors[k] for k in names})
        out = fn(**leaves, chunk_size=16, dt_softplus=softplus, dt_limit=limit, **extra)
        w = randn64(torch.Generator().manual_seed(3), *out.shape).to(out.device)
        (out.double() * w).sum().backward()
        return out, grads_of(leaves)

    out, got = grads(ssd_scan, t, backend=backend)
    r_out, ref = grads(ssd_scan_ref, to64(t))
    errs = {"out": rel_err(out, r_out)}
    errs.update({"d" + k: rel_err(got[k], v) for k, v in ref.items()})
    assert got["dt"].dtype == t["dt"].dtype
    assert all(v < TRITON_TOL[torch.float32] for v in errs.values()), errs


@pytest.mark.parametrize("backend", backend_params("triton"))
def test_triton_other_block_config(backend, monkeypatch, nan_empty):
    """The row-block sizes and warps (module knobs a GPU run may retune) change only the
    tiling: each dot path's other row block (32 rows for half operands, 64 for float32
    ones, which the CPU runs), 8 warps, same results (and no kernel reads an element of
    the unfilled buffers that none wrote: nan_empty)."""
    mod = nan_empty
    assert (mod.BLOCK_M, mod.BLOCK_M_F32) == (64, 32)   # the defaults this test steps away from
    monkeypatch.setattr(mod, "BLOCK_M", 32)
    monkeypatch.setattr(mod, "BLOCK_M_F32", 64)
    monkeypatch.setattr(mod, "BLOCK_WARPS", 8)
    t = kernel_inputs(1, 150, 2, 16, 32, 1, torch.float32, D_per_p=True, seed=3, device=device_of(backend))
    limit = (1e-3, 0.5)
    out, final, grads = run_kernel_case(ssd_scan, t, 128, limit, backend=backend)
    r_out, r_final, r_grads = run_kernel_case(ssd_scan_ref, to64(t), 128, limit)
    errs = {"out": rel_err(out, r_out), "final": rel_err(final, r_final)}
    errs.update({"d" + k: rel_err(grads[k], v) for k, v in r_grads.items()})
    assert all(v < TRITON_TOL[torch.float32] for v in errs.values()), errs


@pytest.mark.parametrize("backend", backend_params("triton"))
@pytest.mark.parametrize("H", [4, 24], ids=["one-split", "three-splits"])
def test_triton_packed_inputs_read_in_place(backend, H, nan_empty):
    """x | B | C as the column blocks of one tensor and dt a slice of a wider one (as
    Mamba-2's conv and in_proj outputs give them) are read in place: the outputs and
    every gradient equal those of contiguous copies bit for bit, and dx, dB, dC come
    back as the blocks of one tensor (with 24 heads in a group, dB and dC sum 3 head
    splits first)."""
    batch, L, P, N, G = 2, 37, 4, 8, 1
    t = kernel_inputs(batch, L, H, P, N, G, torch.float32, seed=H, device=device_of(backend))
    limit = (1e-3, 0.5)
    contiguous = run_kernel_case(ssd_scan, t, 16, limit, backend=backend)

    g = torch.Generator().manual_seed(7)
    packed = torch.cat([t["x"].flatten(2), t["B"].flatten(2), t["C"].flatten(2)], -1)
    dt_wide = torch.cat([randn(g, batch, L, 3, device=packed.device), t["dt"]], -1)
    packed, dt_wide = packed.requires_grad_(), dt_wide.requires_grad_()
    x, B, C = packed.split([H * P, G * N, G * N], dim=-1)
    x, B, C = x.unflatten(-1, (H, P)), B.unflatten(-1, (G, N)), C.unflatten(-1, (G, N))
    dt = dt_wide[..., 3:]
    rest = leaf_copies({k: t[k] for k in ("A", "D", "z", "dt_bias", "initial_states")})
    out, final = ssd_scan(x, dt, rest["A"], B, C, 16, D=rest["D"], z=rest["z"],
                          dt_bias=rest["dt_bias"], dt_softplus=True, dt_limit=limit,
                          initial_states=rest["initial_states"], return_final_states=True,
                          backend=backend)
    g = torch.Generator().manual_seed(99)   # run_kernel_case's loss weights
    loss = (out.double() * randn64(g, *out.shape).to(out.device)).sum() \
        + (final.double() * randn64(g, *final.shape).to(out.device)).sum()
    dx, dB, dC, ddt = torch.autograd.grad(loss, [x, B, C, dt], retain_graph=True)
    assert dx._base is not None and dx._base is dB._base is dC._base
    loss.backward()
    got = {"x": dx, "B": dB, "C": dC, "dt": ddt, **grads_of(rest)}
    assert torch.equal(out, contiguous[0]) and torch.equal(final, contiguous[1])
    for k, v in contiguous[2].items():
        assert torch.equal(got[k], v), k
    assert torch.equal(packed.grad, torch.cat([dx.flatten(2), dB.flatten(2), dC.flatten(2)], -1))
    assert torch.equal(dt_wide.grad[..., 3:], ddt) and not dt_wide.grad[..., :3].any()


# ---------------------------------------------------------------- input checks


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


def test_triton_refuses_sequences_past_32_bit_offsets():
    """The kernels' in-sequence offsets are 32-bit: a sequence whose steps x row stride
    reach 2^31 elements is a clear error, not rows read from the wrong place (meta tensors:
    only shapes and strides are read)."""
    pytest.importorskip("triton")
    from mimetic.ops.ssd.triton import _Launch

    def launch(L):
        x = torch.empty(1, L, 24, 64, device="meta")
        dt = torch.empty(1, L, 24, device="meta")
        B = torch.empty(1, L, 1, 128, device="meta")
        return _Launch(x, dt, torch.empty(24, device="meta"), B, B, 256, None, True, (0.0, math.inf))

    assert launch(1 << 20).L == 1 << 20            # 2^20 x 1536 < 2^31
    with pytest.raises(ValueError, match="past 2\\^31 elements"):
        launch(3 << 20)


def test_float32_matmul_precision_follows_torch_and_the_tested_tiling(monkeypatch):
    """Left unset, the kernels' float32 matmul precision follows torch's setting ("highest"
    -> exact "ieee", "high"/"medium" -> "tf32x3"); tf32x3 runs only at the tiling it passed
    the GPU tests at (32 rows, 4 warps), and never in the CPU interpreter."""
    pytest.importorskip("triton")
    from mimetic.ops.ssd import triton as mod

    monkeypatch.setattr(mod, "F32_PRECISION", None)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert mod._f32_precision(True, 32, 4) == "ieee"
        for setting in ("high", "medium"):
            torch.set_float32_matmul_precision(setting)
            assert mod._f32_precision(True, 32, 4) == "tf32x3"
            assert mod._f32_precision(True, 16, 4) == "tf32x3"
            assert mod._f32_precision(True, 64, 4) == "ieee"
            assert mod._f32_precision(True, 32, 8) == "ieee"
            assert mod._f32_precision(False, 32, 4) == "ieee"
    finally:
        torch.set_float32_matmul_precision(before)
    monkeypatch.setattr(mod, "F32_PRECISION", "tf32x3")
    assert mod._f32_precision(True, 32, 4) == "tf32x3"
    monkeypatch.setattr(mod, "F32_PRECISION", "tf32")
    with pytest.raises(ValueError, match="F32_PRECISION must be"):
        mod._f32_precision(True, 32, 4)
