"""RMSNorm (gated, grouped, fused with the residual add): each backend against the formula
written out by hand or against the reference (``rms_norm_ref``, also the "torch" backend)
in float64 on the same inputs, outputs and every gradient; strided inputs; input checks.
"""
from __future__ import annotations

import pytest
import torch

from mimetic.ops.rms_norm import rms_norm, rms_norm_ref

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
    to64,
)

# Triton against the reference, ||got - ref|| / ||ref||: fp32 arithmetic; one rounding of
# each output for bf16.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}


def rnd(*shape, seed=0, dtype=torch.float32, device="cpu"):
    """Fresh float64 draws of one seed, cast: the formula tests' inputs."""
    return randn64(torch.Generator().manual_seed(seed), *shape).to(device, dtype)


# ---------------------------------------------------------------- against the formula


def rms_by_hand(x, w, b=None, z=None, eps=1e-5, group_size=None, norm_before_gate=False,
                residual=None):
    """The gated RMSNorm formula, element by element over the groups, in float64."""
    x = x.double()
    if residual is not None:
        x = x + residual.double()
    h = x if z is None or norm_before_gate else x * (z.double() * torch.sigmoid(z.double()))
    gs = h.shape[-1] if group_size is None else group_size
    out = torch.empty_like(h)
    for start in range(0, h.shape[-1], gs):
        part = h[..., start:start + gs]
        out[..., start:start + gs] = part / torch.sqrt((part ** 2).mean(-1, keepdim=True) + eps)
    out = out * w.double()
    if b is not None:
        out = out + b.double()
    if z is not None and norm_before_gate:
        out = out * (z.double() * torch.sigmoid(z.double()))
    return out, x


@pytest.mark.parametrize("backend", backend_params("torch", "triton"))
@pytest.mark.parametrize("group_size", [None, 2, 4], ids=lambda g: f"group{g}")
@pytest.mark.parametrize("gate", [None, "before", "after"], ids=lambda g: f"gate_{g}")
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_matches_formula(backend, group_size, gate, with_bias):
    dev = device_of(backend)
    x, w = rnd(3, 5, 8, device=dev), rnd(8, seed=1, device=dev)
    b = rnd(8, seed=2, device=dev) if with_bias else None
    z = rnd(3, 5, 8, seed=3, device=dev) if gate else None
    out = rms_norm(x, w, b, z=z, group_size=group_size, norm_before_gate=gate == "after", backend=backend)
    want, _ = rms_by_hand(x, w, b, z, group_size=group_size, norm_before_gate=gate == "after")
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", backend_params("torch", "triton"))
@pytest.mark.parametrize("residual_in_fp32", [False, True], ids=["residual_x_dtype", "residual_fp32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_residual_prenorm_matches_formula(backend, residual_in_fp32, dtype):
    dev = device_of(backend)
    x, w = rnd(2, 4, 6, dtype=dtype, device=dev), rnd(6, seed=1, device=dev)
    res = rnd(2, 4, 6, seed=2, dtype=dtype, device=dev)
    out, new_res = rms_norm(x, w, residual=res, prenorm=True, residual_in_fp32=residual_in_fp32, backend=backend)
    want, want_res = rms_by_hand(x, w, residual=res)
    assert out.dtype == dtype
    assert new_res.dtype == (torch.float32 if residual_in_fp32 else dtype)
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(new_res.double(), want_res, rtol=tol, atol=tol)
    # Without prenorm only the output comes back, and it is the same.
    torch.testing.assert_close(rms_norm(x, w, residual=res, backend=backend), out, rtol=0, atol=0)


def test_reference_gradients_match_formula():
    x, w, z = (rnd(2, 3, 4, dtype=torch.float64).requires_grad_(),
               rnd(4, seed=1, dtype=torch.float64).requires_grad_(),
               rnd(2, 3, 4, seed=2, dtype=torch.float64).requires_grad_())
    got = torch.autograd.grad(rms_norm(x, w, z=z, group_size=2).sum(), (x, w, z))
    want = torch.autograd.grad(rms_by_hand(x, w, z=z, group_size=2)[0].sum(), (x, w, z))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- Triton against the reference


def run(fn, inputs, opts, douts, **kw):
    """Outputs and the gradients of the given inputs of one forward + backward."""
    leaves = leaf_copies(inputs)
    res = fn(leaves["x"], leaves["weight"], bias=leaves["bias"], z=leaves["z"], residual=leaves["residual"],
             **opts, **kw)
    outs = res if isinstance(res, tuple) else (res,)
    backward_weighted(outs, douts)
    return outs, grads_of(leaves)


CASES = [
    pytest.param(dict(z=False, res=False, group_size=None, norm_before_gate=False, prenorm=False), id="plain"),
    pytest.param(dict(z=True, res=False, group_size=None, norm_before_gate=False, prenorm=False), id="gated"),
    pytest.param(dict(z=True, res=False, group_size=8, norm_before_gate=True, prenorm=False),
                 id="grouped_gate_after"),
    pytest.param(dict(z=False, res=True, group_size=None, norm_before_gate=False, prenorm=True), id="residual"),
    pytest.param(dict(z=True, res=True, group_size=12, norm_before_gate=False, prenorm=True, residual_in_fp32=True),
                 id="all"),
]


@pytest.mark.parametrize("backend", backend_params("triton"))
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_matches_reference(backend, case, dtype, bias):
    case = dict(case)
    use_z, use_res = case.pop("z"), case.pop("res")
    shape = (3, 5, 24) if not CUDA else (4, 1000, 1536)
    dim = shape[-1]
    dev = device_of(backend)
    g = torch.Generator().manual_seed(dim + len(case))
    r = lambda *s: randn(g, *s, device=dev)  # noqa: E731
    inputs = dict(x=r(*shape).to(dtype), weight=1 + 0.1 * r(dim),
                  bias=0.1 * r(dim) if bias else None,
                  z=r(*shape).to(dtype) if use_z else None,
                  residual=r(*shape).to(dtype) if use_res else None)
    douts = [randn64(g, *shape).to(dev) for _ in range(2)]
    outs, grads = run(rms_norm, inputs, case, douts, backend=backend)
    r_outs, r_grads = run(rms_norm_ref, to64(inputs), case, douts)
    assert outs[0].dtype == dtype
    if case.get("prenorm"):
        want = torch.float32 if case.get("residual_in_fp32") else dtype
        assert outs[1].dtype == want
    errs = {f"out{i}": rel_err(o, ro) for i, (o, ro) in enumerate(zip(outs, r_outs))}
    errs.update({"d" + k: rel_err(grads[k], v) for k, v in r_grads.items()})
    tol = TOL[dtype]
    assert all(v < tol for v in errs.values()), errs


@pytest.mark.parametrize("backend", backend_params("triton"))
@pytest.mark.parametrize("rows", [1, 3, 130], ids=lambda m: f"rows{m}")
def test_strided_views(backend, rows):
    """x, z and residual as column slices of one wider tensor (Mamba-2 passes z as a slice
    of its input projection): read through their row strides, same output and gradients
    as the reference; one row (batch-1 decoding), a few rows, and enough rows for the
    multi-row tiles."""
    dim, g = 24, torch.Generator().manual_seed(rows)
    base = torch.randn(rows, 3 * dim + 5, generator=g)
    weight = 1 + 0.1 * torch.randn(dim, generator=g)
    douts = [randn64(g, rows, dim) for _ in range(2)]
    results = []
    for fn, dtype, dev in ((rms_norm, torch.float32, device_of(backend)), (rms_norm_ref, torch.float64, "cpu")):
        wide = base.to(dev, dtype, copy=True).requires_grad_(True)
        w = weight.to(dev, dtype, copy=True).requires_grad_(True)
        x, z, residual = wide[:, :dim], wide[:, dim:2 * dim], wide[:, 2 * dim + 5:]
        assert z.stride(0) == 3 * dim + 5
        kw = dict(backend=backend) if fn is rms_norm else {}
        outs = fn(x, w, z=z, residual=residual, group_size=8, prenorm=True, **kw)
        sum((o.double().cpu() * d).sum() for o, d in zip(outs, douts)).backward()
        results.append([o.detach().cpu() for o in outs] + [wide.grad.cpu(), w.grad.cpu()])
    for got, ref in zip(*results):
        assert rel_err(got, ref) < 1e-5


# ---------------------------------------------------------------- input checks


def test_validation():
    x, w = rnd(2, 6), rnd(6)
    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm(x, rnd(5))
    with pytest.raises(ValueError, match="group_size"):
        rms_norm(x, w, group_size=4)
    with pytest.raises(ValueError, match="z must have"):
        rms_norm(x, w, z=rnd(2, 5))
    with pytest.raises(ValueError, match="residual must have"):
        rms_norm(x, w, residual=rnd(3, 6))
    with pytest.raises(TypeError, match="must be a floating"):
        rms_norm(x.int(), w)
