"""The CUDA selective scan kernels, run on the CPU emulation (tests/ops/cuda_emu), against
the float64 reference.

The kernel sources compile with g++ (``-DMIMETIC_CPU_EMULATION``) and run through
``cuda.py``'s own launchers and autograd function; only the GPU is emulated (see
``cuda_emu/__init__.py`` for what every launch checks: memory bounds, barriers, warp
operations, unwritten outputs). Cases: every layout and (u, B / C) dtype pair (A2k8 with
fewer), mixed forward / backward layouts, L = 1 and L not a multiple of the chunks, idle
channels in the last block, B / C per batch and per group, d_state from 1 to 256 (odd
ones leave the two-states-a-pass layouts a last state without a partner), each optional
input left out, strided and 16-byte aligned rows, the forward alone; the thread orders
must agree bit for bit. Skipped without g++.

Tolerances, elementwise: ``|got - ref| <= r |ref| + s + 1e-5 (|ref| + rms(ref))``, with r
the half-ulp bound of the result's dtype (2^-8 bfloat16, 2^-11 float16, 0 float32:
16-bit results are rounded once, at the end, from float32), s half its smallest
subnormal step (16-bit only) and 1e-5 (~170 float32
epsilons) for the float32 arithmetic over up to a few hundred steps and states: the
emulation measures at most 1.3e-6 of (|ref| + rms(ref)) over these cases, and the GPU's
ex2.approx (~2^-22 relative per exp) stays well inside. A logic error (a step, state,
channel or chunk wrong) costs orders of magnitude more.
"""
from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F

from mimetic.ops.selective_scan import cuda
from mimetic.ops.selective_scan.reference import selective_scan_ref

from . import cuda_emu
from .cuda_emu.accuracy import assert_close

pytestmark = pytest.mark.skipif(cuda_emu.GXX is None or platform.system() != "Linux",
                                reason="the CPU emulation of the CUDA kernels needs g++ on Linux")

@pytest.fixture(scope="module")
def emulation(request, tmp_path_factory):
    folder = cuda_emu.build_folder(request, tmp_path_factory)
    return cuda_emu.Emulation(cuda_emu.build(folder))


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
    n: int = 16
    groups: int | None = None         # None: B / C (batch, n, L)
    dtype: torch.dtype = torch.float32
    bc_dtype: torch.dtype | None = None   # None: u's dtype
    layouts: tuple[str, str] = ("A", "A")
    z: bool = True
    D: bool = True
    bias: bool = True
    softplus: bool = True
    h0: bool = True
    last: bool = True
    strided: bool = False             # rows of NaN-padded buffers (no vector access)
    grad: bool = True
    seed: int = 0

    def __str__(self):
        bc = "" if self.bc_dtype is None else f"-bc{str(self.bc_dtype)[6:]}"
        off = [k for k in ("z", "D", "bias", "softplus", "h0", "last") if not getattr(self, k)]
        g = "" if self.groups is None else f"g{self.groups}"
        return (f"{self.batch}x{self.dim}x{self.L}x{self.n}{g}-{str(self.dtype)[6:]}{bc}-{''.join(self.layouts)}"
                + "".join(f"-no_{k}" for k in off) + ("-strided" if self.strided else "")
                + ("" if self.grad else "-fwd_only"))


def _padded(values: torch.Tensor, strided: bool) -> torch.Tensor:
    """values, or a view of them in a NaN-filled buffer two rows / five steps larger on
    the last two axes (unit time stride; reads outside the view give NaN)."""
    if not strided:
        return values.contiguous()
    buf = torch.full((*values.shape[:-2], values.shape[-2] + 2, values.shape[-1] + 5), float("nan"),
                     dtype=values.dtype)
    buf[..., 1:-1, 3:-2] = values
    return buf[..., 1:-1, 3:-2]


def _inputs(c: Case) -> dict:
    g = torch.Generator().manual_seed(c.seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    bcd = c.bc_dtype or c.dtype
    bc_shape = (c.batch, c.n, c.L) if c.groups is None else (c.batch, c.groups, c.n, c.L)
    delta = 0.5 * r(c.batch, c.dim, c.L) - 1
    if not c.softplus:
        delta = F.softplus(delta)      # positive steps without the transform
    t = dict(u=_padded(r(c.batch, c.dim, c.L).to(c.dtype), c.strided),
             delta=_padded(delta.to(c.dtype), c.strided),
             A=-torch.exp(0.5 * r(c.dim, c.n)),
             B=_padded(r(*bc_shape).to(bcd), c.strided), C=_padded(r(*bc_shape).to(bcd), c.strided),
             D=r(c.dim), z=_padded(r(c.batch, c.dim, c.L).to(c.dtype), c.strided),
             delta_bias=(0.3 * r(c.dim) - 1) if c.softplus else 0.1 * torch.rand(c.dim, generator=g),
             initial_state=r(c.batch, c.dim, c.n))
    for k, on in (("z", c.z), ("D", c.D), ("delta_bias", c.bias), ("initial_state", c.h0)):
        if not on:
            t[k] = None
    dout = r(c.batch, c.dim, c.L).to(c.dtype)
    dlast = r(c.batch, c.dim, c.n) if c.last else None
    return dict(inputs=t, dout=dout, dlast=dlast)


def _run(fn, c: Case, data: dict, double: bool, **kw):
    """(outputs, {input: gradient}) of fn on leaf copies (float64 copies for the reference)."""
    leaves = {}
    for k, v in data["inputs"].items():
        if v is not None:
            v = v.detach().double() if double else v.detach()     # detach() keeps a strided layout
            v.requires_grad_(c.grad)
        leaves[k] = v
    with torch.set_grad_enabled(c.grad):
        outs = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], D=leaves["D"], z=leaves["z"],
                  delta_bias=leaves["delta_bias"], delta_softplus=c.softplus, return_last_state=c.last,
                  initial_state=leaves["initial_state"], **kw)
    outs = outs if isinstance(outs, tuple) else (outs,)
    if not c.grad:
        return outs, {}
    grads_out = [data["dout"]] + ([data["dlast"]] if c.last else [])
    torch.autograd.backward(list(outs), [g.to(o.dtype) for g, o in zip(grads_out, outs)])
    return outs, {k: v.grad for k, v in leaves.items() if v is not None}


def _check(c: Case, emu) -> tuple:
    """Runs c on the emulation and the reference, compares everything; returns the
    emulation's outputs and gradients (for the thread-order comparison)."""
    data = _inputs(c)
    config = cuda.CudaScanConfig(*c.layouts)
    got, got_g = _run(cuda.selective_scan_cuda, c, data, double=False, config=config)
    ref, ref_g = _run(selective_scan_ref, c, data, double=True)
    assert_close("out", got[0], ref[0], c.dtype)
    if c.last:
        assert_close("last state", got[1], ref[1], torch.float32)
    assert set(got_g) == set(ref_g)
    for k, g in ref_g.items():
        assert_close(f"d {k}", got_g[k], g, data["inputs"][k].dtype)
    return got, got_g


LAYOUTS = ["A", "B", "C", "A2", "B2", "C2"]
DTYPE_PAIRS = [(torch.float32, None), (torch.bfloat16, None), (torch.float16, None),
               (torch.bfloat16, torch.float32), (torch.float16, torch.float32)]


def _ids(cases):
    return [str(c) for c in cases]


# every layout x dtype pair, at shapes with a partial last block and a partial last chunk
MATRIX = [Case(2, 24, 200, 16, None, dt, bc, (lay, lay)) for lay in LAYOUTS for dt, bc in DTYPE_PAIRS]
MATRIX += [Case(1, 40, 67, 5, 2, dt, bc, (lay, lay), seed=1) for lay in LAYOUTS for dt, bc in DTYPE_PAIRS[:3]]
# A2k8: A2's backward and loads as B's forward (8 steps a thread), so fewer dtype pairs
MATRIX += [Case(2, 24, 200, 16, None, dt, bc, ("A2k8", "A2k8")) for dt, bc in DTYPE_PAIRS[::2]]
MATRIX += [Case(1, 40, 67, 5, 2, torch.bfloat16, layouts=("A2k8", "A2k8"), seed=1)]


@pytest.mark.parametrize("case", MATRIX, ids=_ids(MATRIX))
def test_layouts_and_dtypes(emu, case):
    _check(case, emu)


SHAPES = [
    Case(2, 8, 1, 4),                              # L = 1
    Case(1, 8, 1, 4, layouts=("B", "C")),
    Case(2, 16, 129, 33, 4),                       # 3 forward / 5 backward state groups, L = 2 chunks + 1
    Case(2, 16, 129, 33, 4, layouts=("C", "C")),
    Case(1, 12, 300, 3, 3, layouts=("B", "B")),    # B's chunks: 256 forward, 128 backward
    Case(1, 8, 40, 70),                            # d_state above 64
    Case(1, 8, 40, 70, layouts=("C", "C"), dtype=torch.bfloat16),
    Case(1, 6, 23, 1),                             # d_state 1
    Case(1, 4, 20, 256, layouts=("A", "A")),       # the largest d_state
    Case(1, 4, 20, 256, layouts=("B", "B"), dtype=torch.float16),
    Case(3, 20, 64, 8, 5),                         # L = the backward chunk exactly
    Case(2, 130, 17, 2, None, layouts=("C", "C")), # a second block per group in C
    Case(2, 48, 100, 16, 3, layouts=("A", "B")),   # forward and backward layouts differ
    Case(2, 48, 100, 16, 3, layouts=("C", "A"), dtype=torch.bfloat16),
    Case(2, 48, 150, 16, None, layouts=("B", "C"), dtype=torch.float16, bc_dtype=torch.float32),
    # two states a pass: an odd d_state leaves a last state without a partner in the last group
    Case(2, 8, 1, 1, layouts=("A2", "A2")),
    Case(1, 6, 23, 1, layouts=("A2k8", "A2")),
    Case(2, 16, 129, 33, 4, layouts=("A2", "A2")),
    Case(2, 16, 129, 33, 4, layouts=("A2k8", "A2"), dtype=torch.bfloat16),
    Case(1, 8, 40, 70, layouts=("A2", "A2"), dtype=torch.float16),
    Case(1, 4, 20, 256, layouts=("A2k8", "A2")),
    Case(2, 48, 100, 15, 3, layouts=("A2", "A")),
    Case(2, 48, 100, 15, 3, layouts=("A", "A2"), dtype=torch.bfloat16),
    Case(2, 48, 150, 9, None, layouts=("C", "A2"), dtype=torch.float16, bc_dtype=torch.float32),
    Case(1, 12, 300, 3, 3, layouts=("A2k8", "B")),
    Case(2, 8, 1, 1, layouts=("B2", "B2")),
    Case(1, 12, 300, 3, 3, layouts=("B2", "B2")),  # past B's chunks, odd d_state
    Case(1, 4, 20, 256, layouts=("B2", "B2"), dtype=torch.float16),
    Case(2, 16, 129, 33, 4, layouts=("C2", "C2")),
    Case(1, 8, 40, 63, layouts=("C2", "C2"), dtype=torch.bfloat16),
    Case(2, 130, 17, 2, None, layouts=("C2", "C2")),  # a second block per group
    Case(2, 48, 100, 15, 3, layouts=("B2", "C2")),
    Case(2, 48, 100, 15, 3, layouts=("C2", "B"), dtype=torch.bfloat16),
]


@pytest.mark.parametrize("case", SHAPES, ids=_ids(SHAPES))
def test_shapes(emu, case):
    _check(case, emu)


BASE = Case(2, 20, 90, 6, 2)
OPTIONS = [replace(BASE, **{k: False}) for k in ("z", "D", "bias", "softplus", "h0", "last")]
OPTIONS += [replace(BASE, z=False, D=False, bias=False, softplus=False, h0=False, last=False),
            replace(BASE, z=False, D=False, bias=False, softplus=False, h0=False, last=False, layouts=("C", "C"),
                    dtype=torch.bfloat16)]
OPTIONS += [replace(BASE, n=7, layouts=(("A2", "A2k8")[i % 2], "A2"), **{k: False})
            for i, k in enumerate(("z", "D", "bias", "softplus", "h0", "last"))]
OPTIONS += [replace(BASE, n=7, z=False, D=False, bias=False, softplus=False, h0=False, last=False, layouts=("A2", "A2"),
                    dtype=torch.float16)]


@pytest.mark.parametrize("case", OPTIONS, ids=_ids(OPTIONS))
def test_optional_inputs(emu, case):
    _check(case, emu)


ROWS = [Case(2, 24, 128, 16, None, torch.float32), Case(2, 24, 192, 16, 2, torch.bfloat16, layouts=("B", "C")),
        Case(1, 40, 64, 8, None, torch.float16, torch.float32, layouts=("C", "A"))]


@pytest.mark.parametrize("case", ROWS, ids=_ids(ROWS))
@pytest.mark.parametrize("strided", [False, True], ids=["aligned", "strided"])
def test_vector_and_strided_rows(emu, case, strided):
    """Aligned rows take the 16-byte vector loads and stores (the launch's ``vec``),
    NaN-padded strided rows the element path (a read outside a row gives NaN)."""
    case = replace(case, strided=strided)
    _check(case, emu)
    vec = {spec.direction: k.last_params["vec"] for spec, k in emu._kernels.items() if k.last_params}
    assert vec and set(vec.values()) == {0 if strided else 1}, vec


FORWARD_ONLY = [Case(2, 24, 200, 16, grad=False), Case(1, 40, 67, 5, 2, torch.bfloat16, grad=False,
                                                        layouts=("B", "B")),
                Case(2, 130, 1, 3, grad=False, layouts=("C", "C"), h0=False),
                Case(2, 24, 200, 5, grad=False, layouts=("A2", "A2")),
                Case(1, 40, 67, 17, 2, torch.float16, grad=False, layouts=("A2k8", "A2k8"))]


@pytest.mark.parametrize("case", FORWARD_ONLY, ids=_ids(FORWARD_ONLY))
def test_forward_without_gradient(emu, case):
    _check(case, emu)


ORDERED = [Case(2, 24, 200, 16, None, torch.bfloat16, layouts=(lay, lay)) for lay in LAYOUTS]
ORDERED += [Case(1, 16, 129, 33, 4, layouts=("A", "C")), Case(1, 16, 129, 33, 4, layouts=("A2k8", "A2"))]


@pytest.mark.parametrize("case", ORDERED, ids=_ids(ORDERED))
def test_thread_orders_agree_bit_for_bit(emu, case):
    """A race between threads (a missing barrier, a lane reading shared memory another
    lane of its warp has not written yet) makes the result depend on the order threads
    run in: descending, random and round-robin orders must match ascending exactly."""
    first, first_g = _check(case, emu)
    for order, seed in ((1, 0), (2, 1), (2, 2), (3, 0)):
        emu.order, emu.seed = order, seed
        data = _inputs(case)
        got, got_g = _run(cuda.selective_scan_cuda, case, data, double=False,
                          config=cuda.CudaScanConfig(*case.layouts))
        for a, b in zip(got, first):
            assert torch.equal(a, b), f"order {order} (seed {seed}): outputs differ"
        for k in first_g:
            assert torch.equal(got_g[k], first_g[k]), f"order {order} (seed {seed}): d {k} differs"


# ----------------------------------------------------------------------------- in the models


def _launched(emu) -> set[str]:
    """The directions ("fwd", "bwd") whose emulated kernels ran since ``emu.reset()``."""
    return {spec.direction for spec, k in emu._kernels.items() if k.last_params is not None}


@pytest.mark.parametrize("packed", [False, True], ids=["lm", "ensemble"])
def test_models_through_the_kernels(emu, monkeypatch, packed):
    """A Mamba-1 LM and a 3-member packed ensemble of it (B / C per member: one group per
    model) with every scan on the kernels, as ``backend="auto"`` runs them on a GPU in
    training, against the same models on the PyTorch scan: logits and every parameter
    gradient (float32)."""
    from mimetic.ensemble import EnsembleLM
    from mimetic.models import MambaConfig, MambaLM
    scan_op = importlib.import_module("mimetic.ops.selective_scan")

    def lm(seed):
        torch.manual_seed(seed)
        return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=11, init="mimetic",
                                   ssm_cfg=dict(layer="Mamba1", d_state=8)))

    def build():
        return EnsembleLM([lm(0), lm(1), lm(2)]) if packed else lm(0)

    ids = torch.randint(0, 11, (2, 37, 3) if packed else (2, 37), generator=torch.Generator().manual_seed(5))
    results = []
    for route in ("torch", "cuda"):
        monkeypatch.setattr(scan_op, "auto_backend", lambda u, tensors, _r=route: _r)
        model = build()
        logits = model(ids)
        logits.float().pow(2).mean().backward()
        results.append((logits.detach(), {k: p.grad for k, p in model.named_parameters()}))
    (ref, ref_g), (got, got_g) = results
    assert _launched(emu) == {"fwd", "bwd"}, _launched(emu)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert got_g.keys() == ref_g.keys()
    for k, g in ref_g.items():
        torch.testing.assert_close(got_g[k], g, rtol=1e-4, atol=1e-6 * float(g.abs().max()),
                                   msg=lambda s, k=k: f"{k}: {s}")


# ----------------------------------------------------------------------------- under torch.compile


def _eager_and_compiled():
    """``selective_scan(..., backend="cuda")`` as :func:`_run` calls it, eager and compiled."""
    from mimetic.ops import selective_scan

    def eager(u, delta, A, B, C, **kw):
        return selective_scan(u, delta, A, B, C, **kw, backend="cuda")
    return eager, torch.compile(eager, backend="aot_eager", fullgraph=True)


@pytest.mark.parametrize("case", [Case(2, 24, 200, 16, 2), Case(1, 8, 37, 5, dtype=torch.bfloat16),
                                  Case(2, 8, 40, 8, z=False, h0=False, strided=True)], ids=str)
def test_compiled_op_runs_the_kernels(emu, case):
    """Under torch.compile, ``backend="cuda"`` is one ``mimetic::selective_scan`` node that
    launches the kernels, forward and backward (the fake kernel promised the checkpoint shape
    they return: the op checks), with the eager kernels' outputs and gradients bit for bit
    (the same launches on the same inputs, one thread order)."""
    torch._dynamo.reset()
    eager, compiled = _eager_and_compiled()
    data = _inputs(case)
    ref, ref_g = _run(eager, case, data, double=False)
    emu.reset()
    got, got_g = _run(compiled, case, data, double=False)
    assert _launched(emu) == {"fwd", "bwd"}
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert got_g.keys() == ref_g.keys()
    for k in ref_g:
        assert torch.equal(got_g[k], ref_g[k]), k
    torch._dynamo.reset()


def test_compiled_op_falls_back_where_the_kernels_cannot_run(emu, monkeypatch):
    """d_state above ``cuda.MAX_STATE``: the compiled op decides at trace time (the kernels'
    one warning) and runs the chunked scan on the CPU (Triton on a GPU), its checkpoint as
    that backend's; the results equal the eager call's, which falls back too."""
    from mimetic.ops.selective_scan.chunked import selective_scan_torch

    # eager's fallback is Triton where it imports, which the CPU runs only through its interpreter
    monkeypatch.setattr(cuda, "_fallback", selective_scan_torch)
    torch._dynamo.reset()
    eager, compiled = _eager_and_compiled()
    case = Case(1, 4, 9, cuda.MAX_STATE + 1, z=False, h0=False)
    data = _inputs(case)
    ref, ref_g = _run(eager, case, data, double=False)
    got, got_g = _run(compiled, case, data, double=False)
    assert not _launched(emu)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert got_g.keys() == ref_g.keys()
    for k in ref_g:
        torch.testing.assert_close(got_g[k], ref_g[k], rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def test_compiled_op_with_dynamic_lengths(emu):
    """``dynamic=True``: one graph for several lengths, whose fake kernel sizes the
    checkpoint from the symbolic length; bit for bit the eager kernels' results."""
    torch._dynamo.reset()
    eager, _ = _eager_and_compiled()
    compiled = torch.compile(eager, backend="aot_eager", fullgraph=True, dynamic=True)
    for L in (40, 57, 90):
        case = Case(2, 8, L, 8)
        data = _inputs(case)
        ref, ref_g = _run(eager, case, data, double=False)
        got, got_g = _run(compiled, case, data, double=False)
        for a, b in zip(got, ref):
            assert torch.equal(a, b), L
        for k in ref_g:
            assert torch.equal(got_g[k], ref_g[k]), (L, k)
    torch._dynamo.reset()
