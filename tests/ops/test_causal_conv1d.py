"""Causal depthwise conv1d: the reference against the formula written out by hand, each
backend against the reference (outputs, final states and every gradient), the layouts the
layers pass (channels last, slices of a wider projection), the Triton tile choice, and the
input checks. The decoding step is tested in test_causal_conv1d_update.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mimetic.ops.causal_conv1d import causal_conv1d, causal_conv1d_ref

from .numerics import backend_params, device_of, leaf_copies, randn, randn64, rel_err

# Triton against the reference in float64, ||got - ref|| / ||ref||: fp32 arithmetic; one
# rounding of each output for bf16/fp16.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def rnd(*shape, seed=0, dtype=torch.float32, device="cpu"):
    """Fresh float64 draws of one seed, cast: the small tests' inputs."""
    return randn64(torch.Generator().manual_seed(seed), *shape).to(device, dtype)


# ---------------------------------------------------------------- the reference and the formula


def conv_by_hand(x, w, bias, past):
    """out[:, d, t] = bias[d] + sum_k w[d, k] x[:, d, t - (W-1) + k], x before 0 from past."""
    W = w.shape[1]
    full = torch.cat([past, x], dim=-1)
    out = torch.zeros_like(x)
    for t in range(x.shape[-1]):
        out[:, :, t] = (full[:, :, t:t + W] * w).sum(-1) + bias
    return out


def test_reference_matches_formula():
    x, w, bias, past = rnd(2, 3, 6, dtype=torch.float64), rnd(3, 4, seed=1, dtype=torch.float64), \
        rnd(3, seed=2, dtype=torch.float64), rnd(2, 3, 3, seed=3, dtype=torch.float64)
    out = causal_conv1d_ref(x, w, bias, initial_states=past)
    torch.testing.assert_close(out, conv_by_hand(x, w, bias, past), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", backend_params("reference", "torch", "triton"))
def test_final_states_are_last_inputs(backend):
    dev = device_of(backend)
    x, past = rnd(2, 3, 2, device=dev), rnd(2, 3, 3, seed=1, device=dev)  # L shorter than W - 1
    _, final = causal_conv1d(x, rnd(3, 4, seed=2, device=dev), initial_states=past, return_final_states=True,
                             backend=backend)
    torch.testing.assert_close(final, torch.cat([past, x], -1)[:, :, -3:], rtol=0, atol=0)


@pytest.mark.parametrize("backend", backend_params("reference", "torch", "triton"))
def test_silu_is_swish(backend):
    dev = device_of(backend)
    x, w = rnd(1, 2, 5, device=dev), rnd(2, 3, device=dev)
    conv = lambda act: causal_conv1d(x, w, activation=act, backend=backend)  # noqa: E731
    torch.testing.assert_close(conv("silu"), conv("swish"))
    torch.testing.assert_close(conv("silu"), F.silu(conv(None)))


# ---------------------------------------------------------------- each backend against the reference


@pytest.mark.parametrize("backend", backend_params("torch", "triton"))
@pytest.mark.parametrize("L", [1, 2, 7, 33], ids=lambda n: f"L{n}")
@pytest.mark.parametrize("W", [2, 4], ids=lambda n: f"W{n}")
@pytest.mark.parametrize("activation", [None, "silu"], ids=["plain", "silu"])
@pytest.mark.parametrize("with_states", [False, True], ids=["zero_past", "past"])
def test_fp32_matches_reference(backend, L, W, activation, with_states):
    """Elementwise against the reference on the same float32 inputs, outputs and gradients."""
    batch, dim, dev = 2, 5, device_of(backend)
    x = rnd(batch, dim, L, device=dev).requires_grad_()
    w = rnd(dim, W, seed=1, device=dev).requires_grad_()
    bias = rnd(dim, seed=2, device=dev).requires_grad_()
    past = rnd(batch, dim, W - 1, seed=3, device=dev).requires_grad_() if with_states else None
    outs, grads = [], []
    for b in (backend, "reference"):
        out, final = causal_conv1d(x, w, bias, activation=activation, initial_states=past,
                                   return_final_states=True, backend=b)
        loss = (out * rnd(*out.shape, seed=4, device=dev)).sum() + (final * rnd(*final.shape, seed=5, device=dev)).sum()
        leaves = [t for t in (x, w, bias, past) if t is not None]
        outs.append((out, final))
        grads.append(torch.autograd.grad(loss, leaves))
    for a, b in zip(outs[0], outs[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def run(fn, x, w, b, h0, act, final, dout, dfinal, **kw):
    """(out, final states or None, gradients of x, w, b, h0) of one forward + backward."""
    leaves = leaf_copies(dict(x=x, w=w, b=b, h0=h0))
    res = fn(leaves["x"], leaves["w"], bias=leaves["b"], activation=act, initial_states=leaves["h0"],
             return_final_states=final, **kw)
    out, fs = res if final else (res, None)
    loss = (out.double() * dout).sum()
    if final:
        loss = loss + (fs.double() * dfinal).sum()
    loss.backward()
    return out, fs, [None if t is None else t.grad for t in leaves.values()]


OPTIONS = [
    pytest.param(dict(act="silu", bias=True, h0=True), id="silu_b_h0"),
    pytest.param(dict(act=None, bias=False, h0=False), id="plain"),
    pytest.param(dict(act="silu", bias=False, h0=False), id="silu"),
]


@pytest.mark.parametrize("backend", backend_params("triton"))
@pytest.mark.parametrize("shape", [(2, 5, 37, 4), (1, 20, 130, 4), (1, 3, 2, 3), (2, 4, 9, 1)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("opts", OPTIONS)
def test_matches_reference(backend, shape, dtype, opts):
    """Against the float64 reference on the same rounded inputs (relative error in norm)."""
    batch, dim, L, W = shape
    act, bias, h0, dev = opts["act"], opts["bias"], opts["h0"], device_of(backend)
    g = torch.Generator().manual_seed(L * 7 + W)
    r = lambda *s: randn(g, *s, device=dev)  # noqa: E731
    x = r(batch, dim, L).to(dtype)
    w = r(dim, W) * 0.5
    b = r(dim) if bias else None
    init = r(batch, dim, W - 1).to(dtype) if h0 else None
    dout = randn64(g, batch, dim, L).to(dev)
    dfinal = randn64(g, batch, dim, W - 1).to(dev)
    final = h0
    out, fs, grads = run(causal_conv1d, x, w, b, init, act, final, dout, dfinal, backend=backend)
    x64, w64 = x.double(), w.double()
    b64 = b.double() if b is not None else None
    i64 = init.double() if init is not None else None
    r_out, r_fs, r_grads = run(causal_conv1d_ref, x64, w64, b64, i64, act, final, dout, dfinal)
    assert out.dtype == dtype
    errs = {"out": rel_err(out, r_out)}
    if final:
        errs["final"] = rel_err(fs, r_fs)
    for name, got, ref in zip(("dx", "dw", "db", "dh0"), grads, r_grads):
        if ref is not None and ref.numel() and ref.abs().sum() > 0:
            errs[name] = rel_err(got, ref)
    tol = TOL[dtype]
    assert all(v < tol for v in errs.values()), errs


# ---------------------------------------------------------------- layouts


@pytest.mark.parametrize("backend", backend_params("triton"))
@pytest.mark.parametrize("layout", ["channels_last", "slice_of_wider", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layouts(backend, layout, dtype):
    """x as the layers pass it: a transposed view of (batch, L, dim) activations, or of a
    slice of a wider projection (Mamba-2's xBC inside zxbcdt); or with no unit stride
    (copied). Output and gradients equal the reference; the output keeps x's layout."""
    batch, dim, L, W = 2, 24, 45, 4
    dev = device_of(backend)
    g = torch.Generator().manual_seed(11)
    r = lambda *s: randn(g, *s, device=dev)  # noqa: E731
    if layout == "strided":
        base = r(batch, dim, 2 * L).to(dtype).requires_grad_(True)
        view = lambda t: t[:, :, ::2]  # noqa: E731
    else:
        width = dim + (7 if layout == "slice_of_wider" else 0)
        base = r(batch, L, width).to(dtype).requires_grad_(True)
        view = lambda t: t[:, :, 3:3 + dim].transpose(1, 2) if width > dim else t.transpose(1, 2)  # noqa: E731
    w, b = (r(dim, W) * 0.5).requires_grad_(True), r(dim).requires_grad_(True)
    dout = randn64(g, batch, dim, L).to(dev)
    out = causal_conv1d(view(base), w, bias=b, activation="silu", backend=backend)
    if layout != "strided":
        assert out.stride(1) == 1, "channels-last input should give a channels-last output"
    (out.double() * dout).sum().backward()
    base64 = base.detach().double().requires_grad_(True)
    w64, b64 = w.detach().double().requires_grad_(True), b.detach().double().requires_grad_(True)
    ref = causal_conv1d_ref(view(base64), w64, bias=b64, activation="silu")
    (ref * dout).sum().backward()
    errs = {"out": rel_err(out, ref), "dx": rel_err(base.grad, base64.grad),
            "dw": rel_err(w.grad, w64.grad), "db": rel_err(b.grad, b64.grad)}
    assert all(v < TOL[dtype] for v in errs.values()), errs


def _nan_empty(monkeypatch):
    """torch.empty filled with NaN while the test runs: an element a kernel should write
    but does not shows up as a non-finite output (rel_err fails on those)."""
    empty = torch.empty

    def nan_empty(*a, **kw):
        t = empty(*a, **kw)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", nan_empty)


# Channels last (Mamba-2's xBC): x is a transposed view of a column slice of a wider
# (batch, L, width) projection. L 143 (odd) and dim 161 (odd) or 160 span several tiles in
# both dims for each kernel (channels-last tiles: forward 128 x 32, dpre 32 x 64, dx
# 128 x 16); dim 160 in a width-184 projection takes the aligned path (VEC 8/4/8; under
# the interpreter the alignment hints are no-ops, on a GPU they vectorize). dout arrives
# channels last as from the layer (autograd of the transposes), or L-contiguous
# ("dout_l": copied into x's layout); h0_f32: float32 initial states with a bf16 x (the
# two-load path).
CL_CASES = [
    pytest.param(dict(dtype=torch.float32, act="silu", bias=True, h0=True, W=4, dout="cl", h0_dtype=None, dim=161,
                      width=172), id="float32-silu-bias-h0-w4-cl-d161"),
    pytest.param(dict(dtype=torch.bfloat16, act="silu", bias=True, h0=True, W=4, dout="cl", h0_dtype=None, dim=161,
                      width=172), id="bfloat16-silu-bias-h0-w4-cl-d161"),
    pytest.param(dict(dtype=torch.bfloat16, act="silu", bias=True, h0=False, W=4, dout="cl", h0_dtype=None, dim=160,
                      width=184), id="bfloat16-silu-bias-w4-cl-d160"),  # the Mamba-2 layer's call
    pytest.param(dict(dtype=torch.float32, act=None, bias=False, h0=False, W=3, dout="dout_l", h0_dtype=None, dim=161,
                      width=172), id="float32-plain-w3-dout_l-d161"),
    pytest.param(dict(dtype=torch.bfloat16, act="silu", bias=True, h0=True, W=4, dout="cl", h0_dtype=torch.float32,
                      dim=160, width=184), id="bfloat16-silu-bias-h0-w4-cl-h0_f32-d160"),
]


@pytest.mark.parametrize("backend", backend_params("triton"))
@pytest.mark.parametrize("case", CL_CASES)
def test_channels_last(backend, case, monkeypatch):
    dtype, act, bias, h0, W = case["dtype"], case["act"], case["bias"], case["h0"], case["W"]
    dout_layout, h0_dtype, dim, width = case["dout"], case["h0_dtype"], case["dim"], case["width"]
    batch, L, off, dev = 2, 143, 8, device_of(backend)
    g = torch.Generator().manual_seed(dim + W)
    r = lambda *s: randn(g, *s, device=dev)  # noqa: E731
    base = r(batch, L, width).to(dtype)
    view = lambda t: t[:, :, off:off + dim].transpose(1, 2)  # noqa: E731
    w = r(dim, W) * 0.5
    b = r(dim) if bias else None
    init = r(batch, dim, W - 1).to(h0_dtype or dtype) if h0 else None
    dout = randn64(g, batch, L, dim).to(dev)
    dfinal = randn64(g, batch, dim, W - 1).to(dev)

    def run_(fn, base, w, b, init, **kw):
        leaves = [t.detach().clone().requires_grad_(True) if t is not None else None
                  for t in (base, w, b, init)]
        res = fn(view(leaves[0]), leaves[1], bias=leaves[2], activation=act,
                 initial_states=leaves[3], return_final_states=h0, **kw)
        out, fs = res if h0 else (res, None)
        if dout_layout == "cl":  # the gradient reaching out is channels last
            loss = (out.transpose(1, 2).double() * dout).sum()
        else:
            loss = (out.double() * dout.transpose(1, 2).contiguous()).sum()
        if h0:
            loss = loss + (fs.double() * dfinal).sum()
        loss.backward()
        return out, fs, [t.grad if t is not None else None for t in leaves]

    with monkeypatch.context() as mp:
        _nan_empty(mp)
        out, fs, grads = run_(causal_conv1d, base, w, b, init, backend=backend)
    assert out.dtype == dtype and out.stride(1) == 1, "the output should be channels last"
    r_out, r_fs, r_grads = run_(causal_conv1d_ref, base.double(), w.double(),
                                b.double() if b is not None else None,
                                init.double() if init is not None else None)
    errs = {"out": rel_err(out, r_out)}
    if h0:
        errs["final"] = rel_err(fs, r_fs)
    for name, got, ref in zip(("dx", "dw", "db", "dh0"), grads, r_grads):
        if ref is not None:
            errs[name] = rel_err(got, ref)
    assert all(v < TOL[dtype] for v in errs.values()), errs


@pytest.mark.parametrize("backend", backend_params("triton"))
def test_triton_tiles_follow_layout(backend):
    """The wrapper's tile choice: L-contiguous x keeps the 16 x 128 tiles; Mamba-2's
    channels-last slice (time stride 3352 = 8 * 419, not a multiple of 16) gets wide channel
    tiles told that its rows are 8-element aligned (16-byte bf16 vectors)."""
    from mimetic.ops.causal_conv1d import triton as conv

    b, L, d = 2, 64, 1792
    xl = torch.empty(b, d, L, dtype=torch.bfloat16)
    meta = conv._meta("fwd", xl, xl, conv._like(xl))
    assert not meta["CL"] and (meta["BLOCK_D"], meta["BLOCK_T"]) == conv.TILES_L["fwd"][:2]
    proj = torch.empty(b, L, 3352, dtype=torch.bfloat16)
    xc = proj[:, :, 1536:1536 + d].transpose(1, 2)
    out = conv._like(xc)
    assert out.stride() == (L * d, 1, d)
    meta = conv._meta("fwd", xc, xc, out)
    assert meta["CL"] and meta["VEC"] == 8 and meta["BLOCK_D"] >= 64
    # strides only: a misaligned start is the pointer's (Triton specializes on its alignment)
    assert conv._vec(8, proj[:, :, 1:1 + d].transpose(1, 2)) == 8
    assert conv._vec(8, torch.empty(b, L, 3351)[:, :, :d].transpose(1, 2)) == 1


# ---------------------------------------------------------------- input checks


def test_validation():
    x, w = rnd(2, 3, 5), rnd(3, 4)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, activation="relu")
    with pytest.raises(ValueError, match="weight must have shape"):
        causal_conv1d(x, rnd(4, 4))
    with pytest.raises(ValueError, match="initial_states"):
        causal_conv1d(x, w, initial_states=rnd(2, 3, 2))
    with pytest.raises(TypeError, match="x must be a floating"):
        causal_conv1d(x.long(), w)
    with pytest.raises(ValueError, match="one device"):
        causal_conv1d(x, w.to("meta"))
