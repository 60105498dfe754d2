"""Triton SSD (Mamba-2) kernels vs the sequential reference: output, final state and
every gradient (forward and backward kernels).

Runs on CUDA when present, else through the Triton interpreter (``TRITON_INTERPRET=1``
in the environment of the pytest process); see test_triton_selective_scan.py.
"""
from __future__ import annotations

import math

import pytest
import torch
from numerics import rel_err, triton_device

DEVICE = triton_device()  # skips this module where Triton cannot run
CUDA = DEVICE == "cuda"

from mimetic.ops.ssd import ssd_scan, ssd_scan_ref  # noqa: E402

# ||got - ref|| / ||ref||. float32 uses exact fp32 matmuls; bf16 feeds the matmuls bf16
# operands (float32 accumulation) and rounds outputs to bf16.
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def inputs(batch, L, H, P, N, G, dtype, D_per_p=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    return dict(
        x=r(batch, L, H, P).to(dtype), dt=(0.5 * r(batch, L, H) - 1.0).to(dtype),
        A=-torch.exp(0.5 * r(H)), B=r(batch, L, G, N).to(dtype), C=r(batch, L, G, N).to(dtype),
        D=r(H, P) if D_per_p else r(H), z=r(batch, L, H, P).to(dtype),
        dt_bias=0.3 * r(H) - 1.0, initial_states=r(batch, H, P, N),
    )


def run(fn, t, chunk, limit, **kw):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
    out, final = fn(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], chunk,
                    D=leaves["D"], z=leaves["z"], dt_bias=leaves["dt_bias"], dt_softplus=True,
                    dt_limit=limit, initial_states=leaves["initial_states"],
                    return_final_states=True, **kw)
    g = torch.Generator().manual_seed(99)
    loss = (out.double() * torch.randn(out.shape, generator=g, dtype=torch.float64).to(DEVICE)).sum() \
        + (final.double() * torch.randn(final.shape, generator=g, dtype=torch.float64).to(DEVICE)).sum()
    loss.backward()
    return out, final, {k: v.grad for k, v in leaves.items()}


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


SHAPES = [  # (batch, L, H, P, N, G, chunk)
    (2, 37, 4, 8, 16, 2, 16),     # several chunks, last one partial
    (1, 150, 2, 16, 32, 1, 128),  # two row blocks inside a chunk
    (1, 5, 3, 4, 8, 3, 16),       # shorter than a chunk, tiny dims (padded tiles)
]
if CUDA:
    SHAPES += [(2, 2048, 24, 64, 128, 1, 256), (1, 1000, 8, 64, 64, 2, 128)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_ssd(shape, dtype, nan_empty):
    batch, L, H, P, N, G, chunk = shape
    t = inputs(batch, L, H, P, N, G, dtype, D_per_p=(L % 2 == 0), seed=L)
    limit = (0.0, math.inf) if dtype == torch.bfloat16 else (1e-3, 0.5)
    out, final, grads = run(ssd_scan, t, chunk, limit, backend="triton")
    r_out, r_final, r_grads = run(ssd_scan_ref, {k: v.double() for k, v in t.items()}, chunk, limit)
    assert out.dtype == dtype and final.dtype == torch.float32
    errs = {"out": rel_err(out, r_out), "final": rel_err(final, r_final)}
    errs.update({"d" + k: rel_err(grads[k], v) for k, v in r_grads.items()})
    tol = TOL[dtype]
    assert all(v < tol for v in errs.values()), errs


OPTIONS = [  # which optional inputs are given; the rest are None / off
    dict(),
    dict(D=True),
    dict(z=True, final=True),
    dict(initial_states=True, dt_bias=True, softplus=True),
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(o) or "bare")
def test_ssd_optional_inputs(opts, nan_empty):
    """Forward and backward with optional inputs left out (no z, D, bias, initial or
    final state), where the kernels take other code paths."""
    t = inputs(2, 37, 4, 8, 16, 2, torch.float32, seed=5)
    if not opts.get("softplus"):
        t["dt"] = t["dt"].abs() * 0.3           # positive time steps without softplus
    kw = dict(dt_softplus=bool(opts.get("softplus")),
              return_final_states=bool(opts.get("final")))
    optional = [k for k in ("D", "z", "dt_bias", "initial_states") if opts.get(k)]

    def run_opts(fn, tensors, **extra):
        leaves = {k: tensors[k].detach().clone().requires_grad_(True)
                  for k in ["x", "dt", "A", "B", "C"] + optional}
        res = fn(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], 16,
                 **{k: leaves[k] for k in optional}, **kw, **extra)
        outs = res if kw["return_final_states"] else (res,)
        g = torch.Generator().manual_seed(3)
        loss = sum((o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)
                    .to(o.device)).sum() for o in outs)
        loss.backward()
        return outs, {k: v.grad for k, v in leaves.items()}

    outs, grads = run_opts(ssd_scan, t, backend="triton")
    r_outs, r_grads = run_opts(ssd_scan_ref, {k: v.double() for k, v in t.items()})
    errs = {f"out{i}": rel_err(o, r) for i, (o, r) in enumerate(zip(outs, r_outs))}
    errs.update({"d" + k: rel_err(grads[k], v) for k, v in r_grads.items()})
    assert all(v < TOL[torch.float32] for v in errs.values()), errs


TRANSFORMS = [  # (dt_softplus, dt_bias given, dt_limit): the time-step transform's paths
    (False, False, (0.0625, 0.5)),      # clamp of raw dt; steps exactly at both ends
    (False, True, (0.0625, 0.5)),       # bias, clamp
    (True, False, (0.0625, 0.5)),       # softplus, clamp active at both ends
    (True, True, (0.0625, math.inf)),   # lower end only; softplus inputs > 20 (its threshold)
    (True, False, (0.0, math.inf)),     # softplus, no clamp
    (False, False, (0.0, math.inf)),    # nothing: dt used as is
]


@pytest.mark.parametrize("softplus,bias,limit", TRANSFORMS,
                         ids=lambda v: str(v).replace(" ", ""))
def test_ssd_time_step_transform(softplus, bias, limit, nan_empty):
    """ddt, d dt_bias and dA through every path of the backward's hand-written time-step
    transform (clamp gradient only where the clamp is inactive, ends included; softplus
    derivative and its threshold), over several chunks with a partial last one, against
    autograd through the float64 reference. Unwritten buffers are NaN (nan_empty)."""
    t = inputs(2, 45, 3, 8, 16, 1, torch.float32, seed=11)
    g = torch.Generator().manual_seed(12)
    if softplus:   # softplus(x) for x in [-4, 1]: 0.018 .. 1.31, across both clamp ends
        dt = 5.0 * torch.rand(t["dt"].shape, generator=g) - 4.0
        if math.isinf(limit[1]):
            dt[:, ::7, 0] = 100.0  # past F.softplus's threshold (20), and e^x overflows
    else:          # raw dt in [0.01, 0.7], some exactly at the clamp's ends
        dt = 0.69 * torch.rand(t["dt"].shape, generator=g) + 0.01
        dt[:, ::5, 1] = 0.0625
        dt[:, 2::5, 2] = 0.5
    t["dt"] = dt.to(DEVICE)
    names = ["x", "dt", "A", "B", "C", "D", "z"] + (["dt_bias"] if bias else [])
    if bias and not softplus:   # a small bias: dt + bias still spans both clamp ends
        t["dt_bias"] = 0.05 * t["dt_bias"] / t["dt_bias"].abs().max()

    def grads(fn, tensors, **extra):
        leaves = {k: tensors[k].detach().clone().requires_grad_(True) for k in names}
        out = fn(**leaves, chunk_size=16, dt_softplus=softplus, dt_limit=limit, **extra)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64).to(out.device)
        (out.double() * w).sum().backward()
        return out, {k: v.grad for k, v in leaves.items()}

    out, got = grads(ssd_scan, t, backend="triton")
    r_out, ref = grads(ssd_scan_ref, {k: v.double() for k, v in t.items()})
    errs = {"out": rel_err(out, r_out)}
    errs.update({"d" + k: rel_err(got[k], v) for k, v in ref.items()})
    assert got["dt"].dtype == t["dt"].dtype
    assert all(v < TOL[torch.float32] for v in errs.values()), errs


def test_ssd_other_block_config(monkeypatch, nan_empty):
    """The row-block size and warps (module knobs a GPU run may retune) change only the
    tiling: 32-row blocks, 8 warps, several row blocks per chunk, same results (and no
    kernel reads an element of the unfilled buffers that none wrote: nan_empty)."""
    mod = nan_empty
    monkeypatch.setattr(mod, "BLOCK_M", 32)
    monkeypatch.setattr(mod, "BLOCK_WARPS", 8)
    t = inputs(1, 150, 2, 16, 32, 1, torch.float32, D_per_p=True, seed=3)
    limit = (1e-3, 0.5)
    out, final, grads = run(ssd_scan, t, 128, limit, backend="triton")
    r_out, r_final, r_grads = run(ssd_scan_ref, {k: v.double() for k, v in t.items()}, 128, limit)
    errs = {"out": rel_err(out, r_out), "final": rel_err(final, r_final)}
    errs.update({"d" + k: rel_err(grads[k], v) for k, v in r_grads.items()})
    assert all(v < TOL[torch.float32] for v in errs.values()), errs
