"""Triton RMSNorm (gated, grouped, residual) vs the reference: outputs and every gradient.

Runs on CUDA when present, else through the Triton interpreter (``TRITON_INTERPRET=1``
in the environment of the pytest process); see test_triton_selective_scan.py.
"""
from __future__ import annotations

import pytest
import torch
from numerics import rel_err, triton_device

DEVICE = triton_device()  # skips this module where Triton cannot run
CUDA = DEVICE == "cuda"

from mimetic.ops.rms_norm import rms_norm, rms_norm_ref  # noqa: E402

# ||got - ref|| / ||ref||: fp32 arithmetic; one rounding of each output for bf16.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}


def run(fn, inputs, opts, douts, **kw):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items() if v is not None}
    res = fn(leaves["x"], leaves["weight"], bias=leaves.get("bias"), z=leaves.get("z"),
             residual=leaves.get("residual"), **opts, **kw)
    outs = res if isinstance(res, tuple) else (res,)
    loss = sum((o.double() * d).sum() for o, d in zip(outs, douts))
    loss.backward()
    return outs, {k: v.grad for k, v in leaves.items()}


CASES = [
    dict(z=False, res=False, group_size=None, norm_before_gate=False, prenorm=False),
    dict(z=True, res=False, group_size=None, norm_before_gate=False, prenorm=False),
    dict(z=True, res=False, group_size=8, norm_before_gate=True, prenorm=False),
    dict(z=False, res=True, group_size=None, norm_before_gate=False, prenorm=True),
    dict(z=True, res=True, group_size=12, norm_before_gate=False, prenorm=True,
         residual_in_fp32=True),
]


@pytest.mark.parametrize("case", CASES, ids=["plain", "gated", "grouped_gate_after",
                                             "residual", "all"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_rms_norm(case, dtype, bias):
    case = dict(case)
    use_z, use_res = case.pop("z"), case.pop("res")
    shape = (3, 5, 24) if not CUDA else (4, 1000, 1536)
    dim = shape[-1]
    g = torch.Generator().manual_seed(dim + len(case))
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    inputs = dict(x=r(*shape).to(dtype), weight=1 + 0.1 * r(dim),
                  bias=0.1 * r(dim) if bias else None,
                  z=r(*shape).to(dtype) if use_z else None,
                  residual=r(*shape).to(dtype) if use_res else None)
    douts = [torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE) for _ in range(2)]
    outs, grads = run(rms_norm, inputs, case, douts, backend="triton")
    inputs64 = {k: (v.double() if v is not None else None) for k, v in inputs.items()}
    r_outs, r_grads = run(rms_norm_ref, inputs64, case, douts)
    assert outs[0].dtype == dtype
    if case.get("prenorm"):
        want = torch.float32 if case.get("residual_in_fp32") else dtype
        assert outs[1].dtype == want
    errs = {f"out{i}": rel_err(o, ro) for i, (o, ro) in enumerate(zip(outs, r_outs))}
    errs.update({"d" + k: rel_err(grads[k], v) for k, v in r_grads.items()})
    tol = TOL[dtype]
    assert all(v < tol for v in errs.values()), errs


@pytest.mark.parametrize("rows", [1, 3, 130], ids=lambda m: f"rows{m}")
def test_rms_norm_strided_views(rows):
    """x, z and residual as column slices of one wider tensor (Mamba-2 passes z as a slice
    of its input projection): read through their row strides, same output and gradients
    as the reference; one row (batch-1 decoding), a few rows, and enough rows for the
    multi-row tiles."""
    dim, g = 24, torch.Generator().manual_seed(rows)
    base = torch.randn(rows, 3 * dim + 5, generator=g)
    weight = 1 + 0.1 * torch.randn(dim, generator=g)
    douts = [torch.randn(rows, dim, generator=g, dtype=torch.float64) for _ in range(2)]
    results = []
    for fn, dtype, dev in ((rms_norm, torch.float32, DEVICE), (rms_norm_ref, torch.float64, "cpu")):
        wide = base.to(dev, dtype, copy=True).requires_grad_(True)
        w = weight.to(dev, dtype, copy=True).requires_grad_(True)
        x, z, residual = wide[:, :dim], wide[:, dim:2 * dim], wide[:, 2 * dim + 5:]
        assert z.stride(0) == 3 * dim + 5
        kw = dict(backend="triton") if fn is rms_norm else {}
        outs = fn(x, w, z=z, residual=residual, group_size=8, prenorm=True, **kw)
        sum((o.double().cpu() * d).sum() for o, d in zip(outs, douts)).backward()
        results.append([o.detach().cpu() for o in outs] + [wide.grad.cpu(), w.grad.cpu()])
    for got, ref in zip(*results):
        assert rel_err(got, ref) < 1e-5
