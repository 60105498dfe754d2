"""The CUDA causal conv1d kernels, run on the CPU emulation (tests/ops/cuda_emu), against the
float64 reference.

The kernel sources compile with g++ (``-DMIMETIC_CPU_EMULATION``) and run through
``causal_conv1d/cuda.py``'s own launchers and autograd function; only the GPU is emulated
(memory bounds, barriers, warp operations, unwritten outputs: see ``cuda_emu/__init__.py``).
Cases: both layouts as the layers pass them (Mamba-1: a channel slice of the (b, 2 d_inner,
L) in_proj output, time contiguous; Mamba-2: a column slice of the (b, L, d_in_proj)
output seen as (b, d, L), channels contiguous) and plain contiguous x, each dtype, odd L
(1, below the halo, past one block), widths 1 to 5 and 8, with and without bias, SiLU and
initial states, the final states, 16-byte aligned rows (vector access) and unaligned
ones, the forward alone; the thread orders must agree bit for bit. Skipped without g++.

Tolerances, elementwise: ``|got - ref| <= r |ref| + s + 1e-5 (|ref| + rms(ref))``, r the
half-ulp bound of the result's dtype (2^-8 bfloat16, 2^-11 float16, 0 float32: results
are rounded once, at the end, from float32), s half its smallest subnormal step (16-bit
only) and 1e-5 for the float32 sums (W terms per output; up to batch x L terms per
dweight entry). A wrong tap, step, channel or block costs orders of magnitude more.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, replace

import pytest
import torch

from mimetic.ops.causal_conv1d import cuda
from mimetic.ops.causal_conv1d.reference import causal_conv1d_ref

from . import cuda_emu
from .cuda_emu import conv as conv_emu
from .cuda_emu.accuracy import assert_close

pytestmark = pytest.mark.skipif(cuda_emu.GXX is None or platform.system() != "Linux",
                                reason="the CPU emulation of the CUDA kernels needs g++ on Linux")

@pytest.fixture(scope="module")
def emulation(request, tmp_path_factory):
    folder = cuda_emu.build_folder(request, tmp_path_factory)
    return conv_emu.ConvEmulation(cuda_emu.build(folder, ("conv_fwd", "conv_bwd")))


@pytest.fixture
def emu(emulation, monkeypatch):
    emulation.install(monkeypatch)
    emulation.reset()
    return emulation


@dataclass(frozen=True)
class Case:
    batch: int = 2
    dim: int = 24
    L: int = 200
    width: int = 4
    dtype: torch.dtype = torch.float32
    layout: str = "mamba1"            # "contiguous", "mamba1" (channel slice), "mamba2" (channels last)
    bias: bool = True
    silu: bool = True
    h0: bool = False
    final: bool = False
    aligned: bool = True              # False: views at odd offsets / strides (no vector access)
    param_dtype: torch.dtype = torch.float32    # of weight, bias, initial states
    grad: bool = True
    seed: int = 0

    def __str__(self):
        flags = [k for k in ("bias", "silu") if not getattr(self, k)]
        extra = [k for k in ("h0", "final") if getattr(self, k)]
        return (f"{self.batch}x{self.dim}x{self.L}w{self.width}-{str(self.dtype)[6:]}-{self.layout}"
                + "".join(f"-no_{k}" for k in flags) + "".join(f"-{k}" for k in extra)
                + ("" if self.aligned else "-unaligned")
                + ("" if self.param_dtype == torch.float32 else f"-p{str(self.param_dtype)[6:]}")
                + ("" if self.grad else "-fwd_only"))

    @property
    def spec_layout(self) -> str:
        return "CL" if self.layout == "mamba2" else "L"


def _x(c: Case, g: torch.Generator) -> torch.Tensor:
    """x (batch, dim, L) in c's layout, as the layers pass it: a view into a larger NaN
    buffer (a read outside the view shows). Aligned: row pitches and offsets in whole
    8-element (16-byte bf16) vectors; unaligned: one element off."""
    values = torch.randn(c.batch, c.dim, c.L, generator=g).to(c.dtype)
    off = 0 if c.aligned else 1
    pitch = lambda n: -(-n // 8) * 8 + off  # noqa: E731
    if c.layout == "contiguous":                # plain (b, d, L) storage
        if c.aligned:
            return values.contiguous()
        return _nan(c.batch, c.dim, c.L + 1, c.dtype)[..., 1:].copy_(values)
    if c.layout == "mamba1":                    # x of in_proj's (b, 2 d_inner, L) output
        buf = _nan(c.batch, 2 * c.dim, pitch(c.L), c.dtype)
        return buf[:, :c.dim, off:off + c.L].copy_(values)
    # Mamba-2: xBC, columns of in_proj's (b, L, d_in_proj) output, seen as (b, d, L)
    lead = 16 + off                             # z's columns before it
    buf = _nan(c.batch, c.L, pitch(lead + c.dim + 1), c.dtype)
    return buf[:, :, lead:lead + c.dim].transpose(1, 2).copy_(values)


def _vec_expected(c: Case, spec: cuda.Spec) -> int:
    """The launch's vector flag: x's view aligned, and the rows of the tensors the
    launcher allocates (out, dx: plain storage in x's layout, pitch L or dim) in whole
    vectors of the spec."""
    pitch = c.dim if c.layout == "mamba2" else c.L
    es = torch.finfo(c.dtype).bits // 8
    return int(c.aligned and (pitch * es) % spec.vector_bytes(es) == 0)


def _nan(*shape_and_dtype):
    *shape, dtype = shape_and_dtype
    return torch.full(shape, float("nan"), dtype=dtype)


def _inputs(c: Case) -> dict:
    g = torch.Generator().manual_seed(c.seed)
    x = _x(c, g)
    t = dict(x=x, weight=(0.5 * torch.randn(c.dim, c.width, generator=g)).to(c.param_dtype),
             bias=torch.randn(c.dim, generator=g).to(c.param_dtype) if c.bias else None,
             initial_states=(torch.randn(c.batch, c.dim, c.width - 1, generator=g).to(c.param_dtype)
                             if c.h0 else None))
    dout = torch.randn(c.batch, c.dim, c.L, generator=g).to(c.dtype)
    dfinal = None
    if c.final:   # its gradient reaches x through torch's slice, added to dx in x's dtype:
        # a second rounding for 16-bit x, so there only zeros (the path still runs)
        dfinal = torch.randn(c.batch, c.dim, c.width - 1, generator=g).to(c.dtype)
        if c.dtype != torch.float32:
            dfinal.zero_()
    return dict(inputs=t, dout=dout, dfinal=dfinal)


def _run(fn, c: Case, data: dict, double: bool):
    """(outputs, {input: gradient}) of fn on leaf copies (float64 copies for the reference)."""
    leaves = {}
    for k, v in data["inputs"].items():
        if v is not None:
            v = v.detach().double() if double else v.detach()     # detach() keeps a strided layout
            v.requires_grad_(c.grad)
        leaves[k] = v
    with torch.set_grad_enabled(c.grad):
        outs = fn(leaves["x"], leaves["weight"], bias=leaves["bias"], activation="silu" if c.silu else None,
                  initial_states=leaves["initial_states"], return_final_states=c.final)
    outs = outs if isinstance(outs, tuple) else (outs,)
    if not c.grad:
        return outs, {}
    grads_out = [data["dout"]] + ([data["dfinal"]] if c.final else [])
    torch.autograd.backward(list(outs), [g.to(o.dtype) for g, o in zip(grads_out, outs)])
    return outs, {k: v.grad for k, v in leaves.items() if v is not None}


def _check(c: Case, emu) -> tuple:
    """Runs c on the emulation and the reference, compares everything; returns the
    emulation's outputs and gradients."""
    data = _inputs(c)
    got, got_g = _run(cuda.causal_conv1d_cuda, c, data, double=False)
    ref, ref_g = _run(causal_conv1d_ref, c, data, double=True)
    assert_close("out", got[0], ref[0], c.dtype)
    assert got[0].stride(1 if c.layout == "mamba2" else 2) == 1, "out not in x's layout"
    if c.final:
        assert_close("final states", got[1], ref[1], c.dtype)
    assert set(got_g) == set(ref_g)
    for k, g in ref_g.items():
        assert_close(f"d {k}", got_g[k], g, data["inputs"][k].dtype)
    launched = {spec.direction: (spec, k.last_params) for spec, k in emu._kernels.items() if k.last_params}
    assert set(launched) == ({"fwd", "bwd"} if c.grad else {"fwd"}), launched.keys()
    for spec, params in launched.values():
        assert spec.layout_name == c.spec_layout and spec.width == c.width, spec
        if c.L > 1:   # at L = 1 dout's (b, d, 1) storage passes for either layout, pitch 1
            assert params["vec"] == _vec_expected(c, spec), (spec.name, params["vec"])
    return got, got_g


DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["contiguous", "mamba1", "mamba2"]


def _ids(cases):
    return [str(c) for c in cases]


# every layout x dtype, odd L (a partial vector and, in "L", a partial block)
MATRIX = [Case(2, 24, 203, 4, dt, lay) for lay in LAYOUTS for dt in DTYPES]
MATRIX += [Case(2, 24, 200, 4, dt, lay, seed=2) for lay in ("contiguous", "mamba1") for dt in DTYPES]  # vector rows
MATRIX += [Case(1, 40, 1029, 4, torch.bfloat16, lay, seed=1) for lay in ("mamba1", "mamba2")]


@pytest.mark.parametrize("case", MATRIX, ids=_ids(MATRIX))
def test_layouts_and_dtypes(emu, case):
    _check(case, emu)


SHAPES = [
    Case(2, 8, 1, 4),                               # L = 1: all halo
    Case(2, 8, 1, 4, layout="mamba2"),
    Case(1, 8, 2, 4, h0=True, final=True),          # L < W - 1: the final states reach into h0
    Case(1, 8, 2, 4, layout="mamba2", h0=True, final=True, dtype=torch.bfloat16),
    Case(2, 300, 37, 4, layout="mamba2"),           # two channel blocks, idle lanes in the last
    Case(2, 257, 37, 4, layout="mamba2", dtype=torch.bfloat16),  # a last block of one channel
    Case(3, 5, 2050, 4, layout="contiguous"),       # three time blocks
    Case(1, 16, 600, 4, layout="mamba2"),            # one block in time
]
SHAPES += [Case(2, 16, 45, w, layout=lay, h0=True, final=True, seed=w)
           for w in (1, 2, 3, 5, 8) for lay in ("mamba1", "mamba2")]


@pytest.mark.parametrize("case", SHAPES, ids=_ids(SHAPES))
def test_shapes_and_widths(emu, case):
    _check(case, emu)


BASE = Case(2, 24, 77, 4)
OPTIONS = []
for lay in ("mamba1", "mamba2"):
    b = replace(BASE, layout=lay)
    OPTIONS += [replace(b, bias=False), replace(b, silu=False), replace(b, bias=False, silu=False),
                replace(b, h0=True), replace(b, h0=True, final=True, dtype=torch.bfloat16),
                replace(b, h0=True, param_dtype=torch.bfloat16, dtype=torch.bfloat16),
                replace(b, aligned=False), replace(b, aligned=False, dtype=torch.float16, h0=True),
                replace(b, grad=False), replace(b, grad=False, dtype=torch.bfloat16, aligned=False)]


@pytest.mark.parametrize("case", OPTIONS, ids=_ids(OPTIONS))
def test_options_and_alignment(emu, case):
    _check(case, emu)


def test_iters_cover_the_steps(emu, monkeypatch):
    """Runs of many steps per thread (a small thread target) in the channels-last layout."""
    monkeypatch.setitem(cuda.TARGET_THREADS, "fwd", 1)
    monkeypatch.setitem(cuda.TARGET_THREADS, "bwd", 1)
    case = Case(2, 40, 301, 4, torch.bfloat16, "mamba2", h0=True)
    _check(case, emu)
    iters = {spec.direction: k.last_params["iters"] for spec, k in emu._kernels.items() if k.last_params}
    assert min(iters.values()) > 1, iters


ORDERED = [Case(2, 24, 203, 4, torch.bfloat16, lay, h0=True) for lay in ("mamba1", "mamba2")]


@pytest.mark.parametrize("case", ORDERED, ids=_ids(ORDERED))
def test_thread_orders_agree_bit_for_bit(emu, case):
    """A race between threads (the shared-memory reduction of dweight read before every
    warp wrote it) makes the result depend on the thread order: descending, random and
    round-robin orders must match ascending exactly."""
    first, first_g = _check(case, emu)
    for order, seed in ((1, 0), (2, 1), (3, 0)):
        emu.order, emu.seed = order, seed
        got, got_g = _run(cuda.causal_conv1d_cuda, case, _inputs(case), double=False)
        for a, b in zip(got, first):
            assert torch.equal(a, b), f"order {order} (seed {seed}): outputs differ"
        for k in first_g:
            assert torch.equal(got_g[k], first_g[k]), f"order {order} (seed {seed}): d {k} differs"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("layout", ["mamba1", "mamba2"])
def test_a_bad_input_stays_causal(emu, layout, value):
    """A non-finite x at step 13 (batch 0, channel 0) leaves every output before it finite,
    and dx finite before the W-1 steps whose outputs it reaches (the halo exchange and the
    runs keep to causal order)."""
    c = Case(2, 6, 24, 4, torch.float32, layout, h0=True)
    data = _inputs(c)
    data["inputs"]["x"][0, 0, 13] = value
    (out,), grads = _run(cuda.causal_conv1d_cuda, c, data, double=False)
    assert torch.isfinite(out[..., :13]).all()
    if value != value:
        assert not torch.isfinite(out[0, 0, 13])
    assert torch.isfinite(grads["x"][..., :13 - (c.width - 1)]).all()
    assert torch.isfinite(grads["x"][:, 1:]).all() and torch.isfinite(grads["x"][1]).all()
