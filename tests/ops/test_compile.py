"""torch.compile and torch.autocast with the scan ops (``mimetic.ops._library``).

Compiled results are compared with eager ones on the same inputs. The compiled graph
runs the same backend (forward; backward: the backend's own backward op, or autograd of
its code for the references and the chunked SSD), so agreement is to float32 rounding,
not to a loose tolerance. Backend "aot_eager" traces forward and backward
like inductor does but skips code generation, which on CPU costs a C++ compile.
"""
from __future__ import annotations

import math

import pytest
import torch

from mimetic import MambaConfig, MambaLM
from mimetic.ops import selective_scan, ssd_scan
from mimetic.ops._dispatch import triton_available, triton_interpret

from .numerics import rel_err

OPS = torch.ops.mimetic
# Triton runs on these CPU tensors through the interpreter only.
BACKENDS = ["reference", "torch"] + (["triton"] if triton_available() and triton_interpret() else [])


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def ss_inputs(full=True, batch=2, dim=4, L=7, n=3, groups=2, seed=0):
    """Mamba-1 scan inputs; ``full`` adds D, z, delta_bias and an initial state."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    t = dict(u=r(batch, dim, L), delta=r(batch, dim, L) * 0.5, A=-torch.rand(dim, n, generator=g) - 0.5,
             B=r(batch, groups, n, L), C=r(batch, groups, n, L))
    if full:
        t.update(D=r(dim), z=r(batch, dim, L), delta_bias=r(dim) * 0.3, initial_state=r(batch, dim, n))
    return t


def ssd_inputs(full=True, batch=2, L=11, H=4, P=3, G=2, N=5, seed=0):
    """Mamba-2 scan inputs; ``full`` adds D, z, dt_bias and initial states."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    t = dict(x=r(batch, L, H, P), dt=r(batch, L, H) * 0.5, A=-torch.rand(H, generator=g) - 0.5,
             B=r(batch, L, G, N), C=r(batch, L, G, N))
    if full:
        t.update(D=r(H), z=r(batch, L, H, P), dt_bias=r(H) * 0.3, initial_states=r(batch, H, P, N))
    return t


def both_scans(ss, ssd):
    """Calls both public scans; returns the outputs and final states."""
    out, last = selective_scan(**ss, delta_softplus=True, return_last_state=True)
    y, final = ssd_scan(**ssd, chunk_size=4, dt_softplus=True, dt_limit=(0.0, 2.0),
                        return_final_states=True)
    return out, last, y, final


def leaves(d):
    return {k: v.detach().clone().requires_grad_() for k, v in d.items()}


def fwd_bwd(fn, ss, ssd):
    ss, ssd = leaves(ss), leaves(ssd)
    outs = fn(ss, ssd)
    w = torch.Generator().manual_seed(1)
    sum((o.double() * torch.randn(o.shape, generator=w, dtype=torch.float64)).sum() for o in outs).backward()
    return outs, {**{"ss." + k: v.grad for k, v in ss.items()}, **{"ssd." + k: v.grad for k, v in ssd.items()}}


def assert_matches(got, ref):
    """Two :func:`fwd_bwd` results agree: outputs (shape, dtype, 1e-6) and every gradient (1e-5)."""
    (outs, grads), (ref_outs, ref_grads) = got, ref
    for g, r in zip(outs, ref_outs):
        assert g.shape == r.shape and g.dtype == r.dtype
        assert rel_err(g, r) < 1e-6
    assert grads.keys() == ref_grads.keys()
    for k in ref_grads:
        assert rel_err(grads[k], ref_grads[k]) < 1e-5, k


def graph_ops(fn, *args):
    """Compile fn with a backend that records its graph; returns the graph's call targets."""
    targets = []

    def backend(gm, example_inputs):
        targets.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm

    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return targets


@pytest.mark.parametrize("full", [True, False], ids=["all-inputs", "no-optional"])
def test_compiled_scans_match_eager(full):
    ss, ssd = ss_inputs(full), ssd_inputs(full)
    compiled = torch.compile(both_scans, backend="aot_eager", fullgraph=True)  # fullgraph: no break
    assert_matches(fwd_bwd(compiled, ss, ssd), fwd_bwd(both_scans, ss, ssd))


def test_graph_holds_one_op_per_scan():
    targets = graph_ops(both_scans, ss_inputs(), ssd_inputs())
    assert targets.count(OPS.selective_scan.default) == 1
    assert targets.count(OPS.ssd_scan.default) == 1


def test_no_final_state_requested():
    """Without return_last_state the op returns a placeholder that must not leak out."""
    ss = ss_inputs()

    def fn(ss):
        return selective_scan(**ss, delta_softplus=True) * 2

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    ref, got = fn(ss), compiled(ss)
    assert got.shape == ss["u"].shape
    assert rel_err(got, ref) < 1e-6


def _ss_op_args(t, requires_grad):
    t = {k: v.clone().requires_grad_(requires_grad) for k, v in t.items()}
    return (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"],
            t["initial_state"])


def _ssd_op_args(t, requires_grad):
    t = {k: v.clone().requires_grad_(requires_grad) for k, v in t.items()}
    return (t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["z"], t["dt_bias"],
            t["initial_states"])


@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck(requires_grad):
    """Schema, fake kernels (shapes, dtypes, strides), autograd registration, AOT dispatch."""
    for last in (True, False):
        torch.library.opcheck(OPS.selective_scan, _ss_op_args(ss_inputs(), requires_grad)
                              + (True, last, "torch"))
        torch.library.opcheck(OPS.selective_scan, _ss_op_args(ss_inputs(), requires_grad)
                              + (False, last, "reference"))
        torch.library.opcheck(OPS.ssd_scan, _ssd_op_args(ssd_inputs(), requires_grad)
                              + (4, True, 0.0, math.inf, last, "torch"))
        torch.library.opcheck(OPS.ssd_scan, _ssd_op_args(ssd_inputs(), requires_grad)
                              + (3, False, 0.1, 2.0, last, "reference"))


def test_opcheck_backward_ops():
    """Schema and fake kernels of the backward ops; on the interpreter also the Triton
    backends' (whose gradients may share a buffer, copied apart by the op)."""
    ss = _ss_op_args(ss_inputs(), False)
    g = torch.randn(ss[0].shape[0], ss[0].shape[2], ss[0].shape[1]).transpose(1, 2)  # any layout
    needs = [True, True, True, True, True, False, True, True, True]
    x = _ssd_op_args(ssd_inputs(), False)
    ssd_args = (torch.randn(x[0].shape), None) + x + (4, True, 0.0, math.inf)
    for backend in ["torch"] + (["triton"] if "triton" in BACKENDS else []):
        torch.library.opcheck(OPS.ssd_scan_backward, ssd_args + (backend, [True] * 9))
    torch.library.opcheck(OPS.selective_scan_backward,
                          (g, torch.randn(2, 4, 3)) + ss + (True, "torch", needs))
    if "triton" in BACKENDS:  # the Triton backward op takes the forward's checkpoints
        _, _, ckpt = OPS.selective_scan(*ss, True, True, "triton", True)
        torch.library.opcheck(OPS.selective_scan_backward,
                              (g, torch.randn(2, 4, 3)) + ss + (True, "triton", needs, ckpt))


def _scans_on(backend):
    def fn(ss, ssd):
        out, last = selective_scan(**ss, delta_softplus=True, return_last_state=True, backend=backend)
        y, final = ssd_scan(**ssd, chunk_size=4, dt_softplus=True, dt_limit=(0.0, 2.0),
                            return_final_states=True, backend=backend)
        return out, last, y, final
    return fn


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_gradients_match_eager(backend, monkeypatch):
    """Every backend: the compiled ops' outputs and gradients equal the eager backend's
    (to float32 rounding), and a backend with a backward of its own runs its forward
    once per forward+backward (its backward op is called directly: no rerun of the
    forward on a helper thread, which only the autograd-only backends need)."""
    import importlib

    calls = []
    if backend != "reference":   # count the forwards of the backends' plain functions
        ss_mod = importlib.import_module(
            "mimetic.ops.selective_scan." + ("triton" if backend == "triton" else "chunked"))
        fwd = ss_mod.selective_scan_fwd
        monkeypatch.setattr(ss_mod, "selective_scan_fwd",
                            lambda *a, **k: calls.append("ss") or fwd(*a, **k))
    if backend == "triton":
        ssd_mod = importlib.import_module("mimetic.ops.ssd.triton")
        ssd_fwd = ssd_mod.ssd_scan_fwd
        monkeypatch.setattr(ssd_mod, "ssd_scan_fwd",
                            lambda *a, **k: calls.append("ssd") or ssd_fwd(*a, **k))
    ss, ssd = ss_inputs(), ssd_inputs()
    fn = _scans_on(backend)
    got = fwd_bwd(torch.compile(fn, backend="aot_eager", fullgraph=True), ss, ssd)
    assert calls.count("ss") == (backend != "reference")
    assert calls.count("ssd") == (backend == "triton")
    assert_matches(got, fwd_bwd(fn, ss, ssd))


def small_model(layer, seed=0):
    ssm = ({"layer": "Mamba2", "d_state": 8, "headdim": 16, "chunk_size": 8} if layer == "Mamba2"
           else {"layer": "Mamba1", "d_state": 8})
    torch.manual_seed(seed)
    return MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=20, ssm_cfg=ssm))


def model_fwd_bwd(model, fn, ids):
    model.zero_grad(set_to_none=True)
    logits = fn(ids)
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    (logits.float() * w).sum().backward()
    return logits, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_compiled_model_matches_eager(layer):
    from torch._dynamo.backends.debugging import aot_eager

    model = small_model(layer)
    ids = torch.randint(0, 20, (2, 13), generator=torch.Generator().manual_seed(3))
    graphs = []

    def recording_aot_eager(gm, example_inputs):
        graphs.append([node.target for node in gm.graph.nodes if node.op == "call_function"])
        return aot_eager(gm, example_inputs)

    ref, ref_grads = model_fwd_bwd(model, model, ids)
    got, got_grads = model_fwd_bwd(model, torch.compile(model, backend=recording_aot_eager), ids)
    assert rel_err(got, ref) < 1e-5
    for name in ref_grads:
        assert rel_err(got_grads[name], ref_grads[name]) < 1e-4, name
    # Both layers' scans in one graph: no break inside the layers. (MambaLM.forward's
    # check of the token ids on CPU is data-dependent and breaks the graph before them.)
    scan = OPS.selective_scan.default if layer == "Mamba1" else OPS.ssd_scan.default
    assert max(g.count(scan) for g in graphs) == 2


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_autocast(layer):
    """bf16 autocast on CPU, eager and compiled, forward and backward inside autocast."""
    model = small_model(layer)
    ids = torch.randint(0, 20, (2, 13), generator=torch.Generator().manual_seed(3))
    ref, ref_grads = model_fwd_bwd(model, model, ids)  # float32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager, eager_grads = model_fwd_bwd(model, model, ids)
        compiled, compiled_grads = model_fwd_bwd(model, torch.compile(model, backend="aot_eager"), ids)
    assert eager.dtype == compiled.dtype == torch.bfloat16  # the LM head ran in bf16
    # bf16 matmuls outside the scans: errors of a few bf16 roundings, no more.
    assert rel_err(eager, ref) < 3e-2
    for name in ref_grads:
        assert rel_err(eager_grads[name], ref_grads[name]) < 6e-2, name
    # The compiled graph makes the same casts as eager autocast.
    assert rel_err(compiled, eager) < 1e-2
    for name in ref_grads:
        assert rel_err(compiled_grads[name], eager_grads[name]) < 1e-2, name


def test_scans_ignore_autocast():
    """Inside autocast the scans give exactly the float32 answer for the same inputs."""
    ss, ssd = ss_inputs(), ssd_inputs()
    ss["u"], ssd["x"] = ss["u"].bfloat16(), ssd["x"].bfloat16()  # outputs in bf16 as well
    ref, ref_grads = fwd_bwd(both_scans, ss, ssd)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_grads = fwd_bwd(both_scans, ss, ssd)
        comp, comp_grads = fwd_bwd(torch.compile(both_scans, backend="aot_eager", fullgraph=True), ss, ssd)
    for g, c, r in zip(got, comp, ref):
        assert g.dtype == c.dtype == r.dtype
        assert torch.equal(g, r)
        assert rel_err(c, r) < 1e-6
    for k in ref_grads:
        assert rel_err(got_grads[k], ref_grads[k]) < 1e-6, k
        assert rel_err(comp_grads[k], ref_grads[k]) < 1e-5, k


@pytest.mark.slow
def test_inductor_model():
    """One inductor build (C++ codegen on CPU): the full stack, not just the graph."""
    model = small_model("Mamba2")
    ids = torch.randint(0, 20, (2, 13), generator=torch.Generator().manual_seed(3))
    ref, ref_grads = model_fwd_bwd(model, model, ids)
    got, got_grads = model_fwd_bwd(model, torch.compile(model), ids)
    assert rel_err(got, ref) < 1e-4
    for name in ref_grads:
        assert rel_err(got_grads[name], ref_grads[name]) < 1e-3, name


def test_dynamic_shapes():
    """The fake kernels work on symbolic sizes: one graph serves several lengths."""
    compiled = torch.compile(both_scans, backend="aot_eager", fullgraph=True, dynamic=True)
    for L in (5, 9):
        ss, ssd = ss_inputs(L=L), ssd_inputs(L=L + 2)
        assert_matches(fwd_bwd(compiled, ss, ssd), fwd_bwd(both_scans, ss, ssd))
