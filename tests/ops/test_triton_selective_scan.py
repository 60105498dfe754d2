"""Triton selective scan vs the sequential reference: forward, last state and every gradient.

Runs on CUDA when present, else on the CPU through the Triton interpreter; run it with
``TRITON_INTERPRET=1`` on machines without a GPU (the variable must be set before triton
compiles anything, i.e. in the environment of the pytest process). On the interpreter the
sizes stay tiny (it executes every tile op in numpy); on a GPU larger sizes are added.

The oracle is the sequential reference evaluated in float64 on the *same* (possibly
bf16/fp16-rounded) inputs, so the tolerances only cover the kernel's own float32
arithmetic and the rounding of its outputs to the input dtype.
"""
from __future__ import annotations

import pytest
import torch

from .numerics import rel_err, triton_device

DEVICE = triton_device()  # skips this module where Triton cannot run
CUDA = DEVICE == "cuda"

from dataclasses import replace  # noqa: E402

from mimetic.ops.selective_scan import selective_scan, selective_scan_ref  # noqa: E402
from mimetic.ops.selective_scan.triton import selective_scan_triton  # noqa: E402
from mimetic.ops.selective_scan.triton_config import (  # noqa: E402
    LaneTiles,
    ScanConfig,
    SegmentTiles,
    default_config,
    next_pow2,
)


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


# Relative error bounds, ||got - ref|| / ||ref||, per input dtype. float32 covers the
# kernel's fp32 arithmetic (exp2, reassociated scan, atomics); low precision covers one
# rounding of each output to that dtype (bf16 has 8 mantissa bits: ~4e-3 per element).
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def make_inputs(batch, dim, L, n, groups, dtype, *, D=True, z=True, bias=True, h0=False,
                seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    bc_shape = (batch, n, L) if groups is None else (batch, groups, n, L)
    t = dict(
        u=rnd(batch, dim, L).to(dtype),
        # Raw delta around softplus^-1 of [1e-3, 1e-1]-ish values, plus spread.
        delta=(rnd(batch, dim, L, scale=0.5) - 1.0).to(dtype),
        # A = -exp(A_log): decays between mild and strong.
        A=-torch.exp(rnd(dim, n, scale=0.5)),
        B=rnd(*bc_shape).to(dtype),
        C=rnd(*bc_shape).to(dtype),
        D=rnd(dim) if D else None,
        z=rnd(batch, dim, L).to(dtype) if z else None,
        delta_bias=(rnd(dim, scale=0.3) - 1.0) if bias else None,
        initial_state=rnd(batch, dim, n) if h0 else None,
    )
    return t


def run(config, t, softplus, last, dout, dlast):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in t.items() if v is not None}
    args = {k: leaves.get(k) for k in t}
    res = selective_scan_triton(args["u"], args["delta"], args["A"], args["B"], args["C"],
                                D=args["D"], z=args["z"], delta_bias=args["delta_bias"],
                                delta_softplus=softplus, return_last_state=last,
                                initial_state=args["initial_state"], config=config)
    out, hlast = (res if last else (res, None))
    loss = (out.double() * dout).sum()
    if last:
        loss = loss + (hlast.double() * dlast).sum()
    loss.backward()
    return out, hlast, {k: v.grad for k, v in leaves.items()}


def reference(t, softplus, last, dout, dlast):
    t64 = {k: (None if v is None else v.detach().double()) for k, v in t.items()}
    leaves = {k: v.clone().requires_grad_(True) for k, v in t64.items() if v is not None}
    args = {k: leaves.get(k) for k in t}
    res = selective_scan_ref(args["u"], args["delta"], args["A"], args["B"], args["C"],
                             D=args["D"], z=args["z"], delta_bias=args["delta_bias"],
                             delta_softplus=softplus, return_last_state=last,
                             initial_state=args["initial_state"])
    out, hlast = (res if last else (res, None))
    loss = (out * dout).sum()
    if last:
        loss = loss + (hlast * dlast).sum()
    loss.backward()
    return out, hlast, {k: v.grad for k, v in leaves.items()}


def check(batch, dim, L, n, groups, dtype, *, softplus=True, last=False, seed=0, forward=None,
          segment=None, **kw):
    """Forward, last state and every gradient against the float64 oracle, with the
    configuration :func:`config_for` (``forward``, ``segment``) gives."""
    t = make_inputs(batch, dim, L, n, groups, dtype, seed=seed, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    dout = torch.randn(batch, dim, L, generator=g, dtype=torch.float64).to(DEVICE)
    dlast = torch.randn(batch, dim, n, generator=g, dtype=torch.float64).to(DEVICE)
    config = config_for(t, True, forward, **(segment or {}))
    out, hlast, grads = run(config, t, softplus, last, dout, dlast)
    r_out, r_last, r_grads = reference(t, softplus, last, dout, dlast)
    tol = TOL[dtype]
    assert out.dtype == dtype and out.shape == (batch, dim, L)
    errors = {"out": rel_err(out, r_out)}
    if last:
        assert hlast.dtype == torch.float32
        errors["last_state"] = rel_err(hlast, r_last)
    for k, ref_g in r_grads.items():
        assert grads[k] is not None, k
        assert grads[k].shape == ref_g.shape and grads[k].dtype == t[k].dtype, k
        errors["d" + k] = rel_err(grads[k], ref_g)
    bad = {k: v for k, v in errors.items() if not v < tol}
    assert not bad, f"tolerance {tol:g} exceeded: {bad} (all: {errors})"


# (batch, dim, L, n, groups): odd lengths, lengths that are not a multiple of the
# 32-step chunk (and shorter than one), batch 1, small and large d_state, grouped B/C.
SMALL = [
    (2, 4, 37, 16, None),
    (1, 3, 5, 4, None),
    (1, 8, 70, 5, 2),
    (1, 4, 11, 64, 4),
    (1, 32, 21, 16, None),   # channels a multiple of 32
    (1, 64, 23, 8, 2),
]
LARGE = [
    (2, 256, 1000, 16, None),
    (1, 96, 777, 128, 3),
    (3, 64, 4099, 16, 2),
]
SHAPES = SMALL + (LARGE if CUDA else [])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + f"g{s[4]}")
def test_forward_backward_fp32(shape):
    check(*shape, dtype=torch.float32, last=True, h0=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_low_precision(dtype):
    check(2, 4, 45, 16, None, dtype, last=True, h0=True, seed=3)
    if CUDA:
        check(2, 512, 2048, 16, None, dtype, seed=4)


@pytest.mark.parametrize("opts", [
    dict(D=False, z=False, bias=False, softplus=False),
    dict(D=True, z=False, bias=True, softplus=True),
    dict(D=False, z=True, bias=False, softplus=True, h0=True),
], ids=["plain", "no_z", "no_D"])
def test_optional_arguments(opts):
    opts = dict(opts)
    softplus = opts.pop("softplus")
    check(1, 4, 33, 8, None, torch.float32, softplus=softplus, **opts)


@pytest.mark.parametrize("variant", ["lane", "segment"])
def test_forward_variants(variant):
    """Both forward kernels, each followed by the lane backward, agree with the oracle."""
    check(1, 32, 29, 16, 2, torch.float32, last=True, h0=True, seed=7, forward=variant)
    if CUDA:
        check(2, 256, 1500, 16, 2, torch.bfloat16, seed=8, forward=variant)


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


def check_forward(batch, dim, L, n, groups, dtype, *, softplus=True, seed=0, forward="segment",
                  segment=None, **kw):
    """Forward only (no autograd: the segments need not be the backward's chunks):
    output and last state against the float64 oracle, by default through the segment
    forward (``forward``, ``segment``: as in :func:`check`)."""
    t = make_inputs(batch, dim, L, n, groups, dtype, seed=seed, **kw)
    args = {k: v for k, v in t.items() if k not in ("u", "delta", "A", "B", "C")}
    config = config_for(t, False, forward, **(segment or {}))
    with torch.no_grad():
        out, last = selective_scan_triton(t["u"], t["delta"], t["A"], t["B"], t["C"], **args,
                                          delta_softplus=softplus, return_last_state=True,
                                          config=config)
        t64 = {k: (None if v is None else v.double()) for k, v in t.items()}
        r_out, r_last = selective_scan_ref(
            t64["u"], t64["delta"], t64["A"], t64["B"], t64["C"],
            **{k: t64[k] for k in args}, delta_softplus=softplus, return_last_state=True)
    assert out.dtype == dtype and out.shape == (batch, dim, L)
    assert last.dtype == torch.float32 and last.shape == (batch, dim, n)
    errors = {"out": rel_err(out, r_out), "last_state": rel_err(last, r_last)}
    bad = {k: v for k, v in errors.items() if not v < TOL[dtype]}
    assert not bad, f"tolerance {TOL[dtype]:g} exceeded: {bad}"


@pytest.mark.parametrize("prefetch", [False, True], ids=["load", "prefetch"])
@pytest.mark.parametrize("shape", SEG_SHAPES, ids=lambda s: "x".join(map(str, s[:4])) + f"g{s[4]}")
def test_segment_forward(shape, prefetch):
    check_forward(*shape, dtype=torch.float32, h0=True, segment=dict(prefetch=prefetch))
    check_forward(*shape, dtype=torch.float32, seed=1,          # no initial state
                  segment=dict(prefetch=prefetch))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_segment_low_precision(dtype):
    # 16-step segments on the interpreter: two x tiles of 8 (one 16-byte vector) each.
    check_forward(2, 8, 45, 16, None, dtype, h0=True, seed=3,
                  segment=None if CUDA else dict(steps=16))
    check(2, 4, 45, 16, None, dtype, last=True, h0=True, seed=3, forward="segment")


@pytest.mark.parametrize("opts", [
    dict(D=False, z=False, bias=False, softplus=False),
    dict(D=True, z=False, bias=True, softplus=True),
    dict(D=False, z=True, bias=False, softplus=True, h0=True),
], ids=["plain", "no_z", "no_D"])
@pytest.mark.parametrize("prefetch", [False, True], ids=["load", "prefetch"])
def test_segment_optional_arguments(opts, prefetch):
    opts = dict(opts)
    softplus = opts.pop("softplus")
    seg = dict(prefetch=prefetch)
    check_forward(1, 4, 33, 8, None, torch.float32, softplus=softplus, segment=seg, **opts)
    check(1, 4, 33, 8, None, torch.float32, softplus=softplus, last=True, forward="segment",
          segment=seg, **opts)


@pytest.mark.parametrize("shape", [(2, 4, 37, 16, None), (1, 8, 70, 5, 2), (1, 3, 5, 1, None)],
                         ids=lambda s: "x".join(map(str, s[:4])) + f"g{s[4]}")
def test_segment_forward_backward(shape):
    """Through the autograd Function: segment forward (segments = the lane backward's
    chunks, whose checkpoints are the segment carries), lane backward."""
    check(*shape, dtype=torch.float32, last=True, h0=True, forward="segment")
    check(*shape, dtype=torch.float32, seed=2, forward="segment")


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
BF16, FP32 = torch.bfloat16, torch.float32
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


def test_config_checks():
    """A configuration the kernels cannot run is refused before any launch."""
    t = make_inputs(1, 4, 9, 4, None, torch.float32)
    cfg = config_for(t, True)
    bad = [replace(cfg, forward="tile"),
           replace(cfg, lane=replace(cfg.lane, channels=8)),        # more than dim / groups
           replace(cfg, lane=replace(cfg.lane, steps=2)),           # < d_state
           replace(cfg, forward="segment", segment=replace(cfg.segment, steps=8)),  # != lane
           replace(cfg, segment=replace(cfg.segment, x_steps=8, bc_steps=16))]
    for c in bad:
        with pytest.raises(ValueError):
            selective_scan_triton(t["u"].requires_grad_(), t["delta"], t["A"], t["B"], t["C"],
                                  config=c)


def test_dispatch_picks_triton_on_cuda():
    if not CUDA:
        pytest.skip("auto picks Triton only for CUDA tensors")
    t = make_inputs(1, 8, 16, 4, None, torch.float32)
    out = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], backend="auto")
    ref = selective_scan_ref(t["u"], t["delta"], t["A"], t["B"], t["C"])
    assert rel_err(out, ref) < TOL[torch.float32]


def test_float64_keeps_float64_accuracy():
    """The kernels compute in float32; float64 inputs are routed to the float64 path."""
    t = make_inputs(1, 4, 13, 4, None, torch.float64)
    t["A"] = t["A"].double()
    out = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"].double(),
                         delta_softplus=True, backend="triton")
    ref = selective_scan_ref(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"].double(),
                             delta_softplus=True)
    assert out.dtype == torch.float64 and rel_err(out, ref) < 1e-12


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
    t = make_inputs(batch, dim, L, n, groups, dtype, h0=True, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    dout = torch.randn(batch, dim, L, generator=g, dtype=torch.float64).to(DEVICE)
    dlast = torch.randn(batch, dim, n, generator=g, dtype=torch.float64).to(DEVICE)
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
    out, last = selective_scan_triton(
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
    r_out, r_last, r_grads = reference(t, True, True, g_out.double(), dlast)
    grads = views({k: lf.grad for k, lf in leaves.items()})
    grads.update({k: o.grad for k, o in others.items()})
    errors = {"out": rel_err(out, r_out), "last_state": rel_err(last, r_last)}
    for k, ref_g in r_grads.items():
        errors["d" + k] = rel_err(grads[k], ref_g)
    bad = {k: e for k, e in errors.items() if not e < TOL[dtype]}
    assert not bad, f"tolerance {TOL[dtype]:g} exceeded: {bad} (all: {errors})"


@pytest.mark.parametrize("variant,layout", [("lane", k) for k in LAYOUTS] + [("segment", "mamba")])
def test_strided_layouts(layout, variant):
    """Strided views (see LAYOUTS) through both forward kernels (each with the lane
    backward) against the float64 oracle: fp32, and for the lane kernels in the Mamba
    and mixed layouts also bf16 and grouped B/C."""
    check_laid_out(2, 4, 37, 4, None, torch.float32, layout, variant)
    if variant == "lane" and layout in ("mamba", "mixed"):
        check_laid_out(2, 4, 29, 4, None, torch.bfloat16, layout, variant, seed=4)
        check_laid_out(1, 8, 21, 4, 2, torch.float32, layout, variant, seed=2)


@pytest.mark.parametrize("layout", ["mamba"])
def test_compile_op_strides(layout):
    """The torch.compile op (``ops/_library.py``) on the Triton backend: its fake kernel
    predicts the strides the kernels give out (like z), so the op's real kernel returns
    the backend's out as is instead of copying it into the fake's layout."""
    from mimetic.ops import _library

    t = make_inputs(2, 4, 19, 4, None, torch.float32, h0=True, seed=5)
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
    layer = Mamba(8, d_state=4, bias=bias, device=DEVICE, dtype=dtype)
    batch, L = 2, 13
    h = torch.randn(batch, L, 8, device=DEVICE, dtype=dtype, requires_grad=True)
    g = torch.randn(batch, L, 8, device=DEVICE, dtype=torch.float64)
    ctx = torch.autocast(DEVICE, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
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
        cache = SSMState(*layer.allocate_state(batch, device=DEVICE, dtype=dtype))
        with torch.no_grad():
            pre = layer(h, cache=cache)
        assert rel_err(pre, r_out) < tol
        assert rel_err(cache.conv_state, r_states[0]) < tol
        assert rel_err(cache.ssm_state, r_states[1]) < tol
