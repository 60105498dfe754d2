"""Triton causal conv1d vs the reference: output, final states and every gradient.

Runs on CUDA when present, else through the Triton interpreter (``TRITON_INTERPRET=1``
in the environment of the pytest process); see test_triton_selective_scan.py.
"""
from __future__ import annotations

import pytest
import torch
from numerics import rel_err, triton_device

DEVICE = triton_device()  # skips this module where Triton cannot run
CUDA = DEVICE == "cuda"

from mimetic.ops.causal_conv1d import causal_conv1d, causal_conv1d_ref  # noqa: E402

# ||got - ref|| / ||ref||: fp32 arithmetic; one rounding of each output for bf16/fp16.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def run(fn, x, w, b, h0, act, final, dout, dfinal, **kw):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None
              for t in (x, w, b, h0)]
    res = fn(leaves[0], leaves[1], bias=leaves[2], activation=act, initial_states=leaves[3],
             return_final_states=final, **kw)
    out, fs = res if final else (res, None)
    loss = (out.double() * dout).sum()
    if final:
        loss = loss + (fs.double() * dfinal).sum()
    loss.backward()
    return out, fs, [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("shape", [(2, 5, 37, 4), (1, 20, 130, 4), (1, 3, 2, 3), (2, 4, 9, 1)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act,bias,h0", [("silu", True, True), (None, False, False),
                                         ("silu", False, False)], ids=["silu_b_h0", "plain", "silu"])
def test_conv(shape, dtype, act, bias, h0):
    batch, dim, L, W = shape
    g = torch.Generator().manual_seed(L * 7 + W)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    x = r(batch, dim, L).to(dtype)
    w = r(dim, W) * 0.5
    b = r(dim) if bias else None
    init = r(batch, dim, W - 1).to(dtype) if h0 else None
    dout = torch.randn(batch, dim, L, generator=g, dtype=torch.float64).to(DEVICE)
    dfinal = torch.randn(batch, dim, W - 1, generator=g, dtype=torch.float64).to(DEVICE)
    final = h0
    out, fs, grads = run(causal_conv1d, x, w, b, init, act, final, dout, dfinal, backend="triton")
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


@pytest.mark.parametrize("layout", ["channels_last", "slice_of_wider", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_conv_layouts(layout, dtype):
    """x as the layers pass it: a transposed view of (batch, L, dim) activations, or of a
    slice of a wider projection (Mamba-2's xBC inside zxbcdt); or with no unit stride
    (copied). Output and gradients equal the reference; the output keeps x's layout."""
    batch, dim, L, W = 2, 24, 45, 4
    g = torch.Generator().manual_seed(11)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    if layout == "strided":
        base = r(batch, dim, 2 * L).to(dtype).requires_grad_(True)
        view = lambda t: t[:, :, ::2]  # noqa: E731
    else:
        width = dim + (7 if layout == "slice_of_wider" else 0)
        base = r(batch, L, width).to(dtype).requires_grad_(True)
        view = lambda t: t[:, :, 3:3 + dim].transpose(1, 2) if width > dim else t.transpose(1, 2)  # noqa: E731
    w, b = (r(dim, W) * 0.5).requires_grad_(True), r(dim).requires_grad_(True)
    dout = torch.randn(batch, dim, L, generator=g, dtype=torch.float64).to(DEVICE)
    out = causal_conv1d(view(base), w, bias=b, activation="silu", backend="triton")
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
    # dtype, act, bias, h0, W, dout layout, h0 dtype, dim, width
    (torch.float32, "silu", True, True, 4, "cl", None, 161, 172),
    (torch.bfloat16, "silu", True, True, 4, "cl", None, 161, 172),
    (torch.bfloat16, "silu", True, False, 4, "cl", None, 160, 184),  # the Mamba-2 layer's call
    (torch.float32, None, False, False, 3, "dout_l", None, 161, 172),
    (torch.bfloat16, "silu", True, True, 4, "cl", torch.float32, 160, 184),
]


@pytest.mark.parametrize("case", CL_CASES, ids=lambda c: "-".join(filter(None, [
    str(c[0]).split(".")[-1], c[1] or "plain", "bias" if c[2] else "", "h0" if c[3] else "",
    f"w{c[4]}", c[5], "h0_f32" if c[6] else "", f"d{c[7]}"])))
def test_conv_channels_last(case, monkeypatch):
    dtype, act, bias, h0, W, dout_layout, h0_dtype, dim, width = case
    batch, L, off = 2, 143, 8
    g = torch.Generator().manual_seed(dim + W)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    base = r(batch, L, width).to(dtype)
    view = lambda t: t[:, :, off:off + dim].transpose(1, 2)  # noqa: E731
    w = r(dim, W) * 0.5
    b = r(dim) if bias else None
    init = r(batch, dim, W - 1).to(h0_dtype or dtype) if h0 else None
    dout = torch.randn(batch, L, dim, generator=g, dtype=torch.float64).to(DEVICE)
    dfinal = torch.randn(batch, dim, W - 1, generator=g, dtype=torch.float64).to(DEVICE)

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
        out, fs, grads = run_(causal_conv1d, base, w, b, init, backend="triton")
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


def test_tiles_follow_layout():
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
