"""The run-time compiled CUDA causal conv1d (ops/causal_conv1d/cuda.py).

Without a GPU: every shipped specialization compiles for sm_90 (nvcc, or NVRTC when its
library loads; skipped when neither exists) with no spills; the loader's own compile and
disk cache; the parameter structs read from the source and filled completely; grids and
vector flags; the fallback to Triton with one warning; the public op's "cuda" backend.
The kernels' numerics: test_cuda_causal_conv1d_emulated.py (CPU emulation). On a GPU
(``-m gpu``; benchmarks/device/issue16_cuda_conv.sh runs these and a wider check):
forward and gradients against the float64 reference in the layers' layouts.
"""
from __future__ import annotations

import ctypes
import os
import warnings

import pytest
import torch

from mimetic.ops import _cuda_rtc, causal_conv1d
from mimetic.ops.causal_conv1d import cuda
from mimetic.ops.causal_conv1d.reference import causal_conv1d_ref

from .cuda_compile import ARCH, COMPILER, assert_no_spills, compile_shipped, needs_compiler
from .numerics import rel_err

GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= cuda.MIN_CAPABILITY


# ----------------------------------------------------------------------------- compile


@pytest.fixture(scope="module")
def compiled_all():
    return compile_shipped(cuda, "cc_all")


@needs_compiler
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_every_specialization_compiles_without_spills(compiled_all, direction):
    specs, found, log = compiled_all[direction]
    assert len(specs) == 2 * 3 * cuda.MAX_WIDTH
    assert_no_spills(specs, found, log)


@needs_compiler
def test_loader_compiles_and_caches(tmp_path, monkeypatch):
    """The loader's path (-D macros, one unmangled entry) for the layers' specializations;
    a second process (memo cleared) reads the cubin from disk."""
    monkeypatch.setenv("MIMETIC_CUDA_CACHE", str(tmp_path))
    monkeypatch.setattr(_cuda_rtc, "_MEMO", {})
    for spec in (cuda.Spec("fwd", 1, 4, "L"), cuda.Spec("bwd", 1, 4, "CL")):
        first = cuda.compiled(spec, ARCH, COMPILER)
        assert not first.from_cache and first.cubin[:4] == b"\x7fELF"
        assert spec.entry.encode() in first.cubin
        res = _cuda_rtc.ptxas_resources(first.log)
        assert res.get("spill_stores") == 0 and res.get("spill_loads") == 0, first.log
        assert list(tmp_path.glob(f"{spec.name}-*.cubin"))
        monkeypatch.setattr(_cuda_rtc, "_MEMO", {})
        again = cuda.compiled(spec, ARCH, COMPILER)
        assert again.from_cache and again.cubin == first.cubin


# ----------------------------------------------------------------------------- specs, params, grids


def test_specs_and_layouts():
    names = {s.name for s in cuda.shipped_specs()}
    assert len(names) == len(cuda.shipped_specs()) == 2 * 2 * 3 * cuda.MAX_WIDTH
    assert cuda.Spec("bwd", 1, 4, "CL").smem_bytes() == 4 * 4 * 32 * 4 * 5
    assert cuda.Spec("fwd", 1, 4, "L").smem_bytes() == 0
    assert cuda.Spec("fwd", 1, 4, "L").vector_bytes(2) == 16 and cuda.Spec("bwd", 1, 4, "CL").vector_bytes(2) == 8
    with pytest.raises(ValueError, match="bad layout"):
        cuda.Layout(False, 2, 64, 1, 8)
    for d in cuda.LAYOUTS.values():
        assert d["L"].s >= cuda.MAX_WIDTH - 1     # the halo comes from one neighbouring lane


def test_param_structs_are_read_from_the_source():
    fwd = [n for n, _ in cuda.FwdParams._fields_]
    bwd = [n for n, _ in cuda.BwdParams._fields_]
    assert fwd[:5] == ["x", "w", "bias", "h0", "out"] and fwd[-3:] == ["silu", "vec", "iters"]
    assert {"dx", "dw", "dbias", "dh0"} <= set(bwd) and bwd[-1] == "iters"
    assert ctypes.sizeof(cuda.FwdParams) == 8 * len(fwd) and ctypes.sizeof(cuda.BwdParams) == 8 * len(bwd)
    with pytest.raises(TypeError, match="missing"):
        _cuda_rtc.make_params(cuda.FwdParams, x=0)


class _Recorder:
    """Stands in for a loaded kernel: records the launch instead of running it."""

    def __init__(self):
        self.calls = []

    def launch(self, grid, block, smem, params, device):
        self.calls.append((grid, block, smem, {n: getattr(params, n) for n, _ in params._fields_}))


def test_launch_parameters_without_a_gpu():
    """The launchers fill every field, size the grid by layout and set the vector flag
    (CPU tensors: only pointers, strides and sizes are read)."""
    batch, dim, L, W = 2, 40, 2048, 4
    xz = torch.randn(batch, 2 * dim, L).to(torch.bfloat16)           # Mamba-1: x of in_proj's output
    x = xz[:, :dim]
    w, b = torch.randn(dim, W), torch.randn(dim)
    fwd, bwd = cuda._specs(x, W, True)
    assert fwd.layout_name == bwd.layout_name == "L"
    rec = _Recorder()
    out = cuda._forward(rec, fwd, x, w, b, None, True)
    (grid, block, smem, p), = rec.calls
    assert grid == (2, dim, batch) and block == (128, 1, 1) and smem == 0
    assert p["x_sd"] == L and p["x_sb"] == 2 * dim * L and p["vec"] == 1 and p["h0"] == 0 and p["silu"] == 1
    assert out.shape == x.shape and out.is_contiguous() and p["out"] == out.data_ptr()
    rec = _Recorder()
    dx, sums, dh0 = cuda._backward(rec, bwd, x, w, b, None, True, torch.randn(batch, dim, L).to(torch.bfloat16))
    (grid, block, smem, p), = rec.calls
    # dweight (dim, W) then dbias (dim,) in one zeroed float32 buffer (added into)
    assert smem == bwd.smem_bytes() and p["dw"] == sums.data_ptr() and dh0 is None
    assert p["dbias"] == sums.data_ptr() + 4 * dim * W and sums.shape == (dim * (W + 1),) and not sums.any()

    # Mamba-2: xBC, columns 16..16+dim of (b, L, d_in_proj), seen as (b, d, L)
    proj = torch.randn(batch, L, 16 + dim + 8).to(torch.bfloat16)
    x = proj[:, :, 16:16 + dim].transpose(1, 2)
    h0 = torch.randn(batch, dim, W - 1)
    fwd, bwd = cuda._specs(x, W, True)
    assert fwd.layout_name == "CL"
    rec = _Recorder()
    out = cuda._forward(rec, fwd, x, w, None, h0, False)
    (grid, block, smem, p), = rec.calls
    assert grid[1:] == (1, batch) and p["x_sl"] == 16 + dim + 8 and p["x_sd"] == 1 and p["vec"] == 1
    assert out.stride(1) == 1 and p["bias"] == 0 and p["h0_dtype"] == 0
    covered = grid[0] * fwd.layout.lt * p["iters"] * fwd.layout.s
    assert covered >= L > covered - fwd.layout.lt * p["iters"] * fwd.layout.s
    odd = torch.randn(batch, L, dim + 3).to(torch.bfloat16)[:, :, 1:1 + dim].transpose(1, 2)
    rec = _Recorder()
    cuda._forward(rec, fwd, odd, w, None, None, False)
    assert rec.calls[0][3]["vec"] == 0


def test_grid_limits_fall_back(monkeypatch):
    monkeypatch.setattr(cuda, "_WARNED", set())
    monkeypatch.setattr(cuda, "_check_device", lambda x: None)
    monkeypatch.setattr(cuda, "_fallback", lambda *a, **k: "fallback")
    x = torch.empty(70000, 1, 4)
    with pytest.warns(RuntimeWarning, match="exceeds 65535"):
        assert cuda.causal_conv1d_cuda(x, torch.randn(1, 4)) == "fallback"
    with pytest.warns(RuntimeWarning, match=f"width 9 > {cuda.MAX_WIDTH}"):
        assert cuda.causal_conv1d_cuda(torch.randn(1, 2, 5), torch.randn(2, 9)) == "fallback"


# ----------------------------------------------------------------------------- fallback and the public op


def test_cpu_tensors_are_refused():
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        causal_conv1d(torch.randn(1, 2, 5), torch.randn(2, 4), backend="cuda")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the Triton fallback runs on the CPU "
                    "only under TRITON_INTERPRET=1")
def test_fallback_warns_once_and_matches_the_reference(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setattr(cuda, "_check_device", lambda x: None)          # pretend these are CUDA tensors
    monkeypatch.setattr(_cuda_rtc, "environment_problem", lambda device, cap: "no CUDA compiler: test")
    monkeypatch.setattr(cuda, "_WARNED", set())
    x, w, b = torch.randn(1, 4, 9), torch.randn(4, 4), torch.randn(4)
    ref = causal_conv1d_ref(x, w, b, activation="silu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = causal_conv1d(x, w, b, activation="silu", backend="cuda")
        out2 = causal_conv1d(x, w, b, activation="silu", backend="cuda")
    mine = [m for m in caught if "CUDA causal conv1d" in str(m.message)]
    assert len(mine) == 1 and "no CUDA compiler: test" in str(mine[0].message) and "Triton" in str(mine[0].message)
    assert mine[0].filename == __file__     # pointed at the line that called the op
    assert rel_err(out, ref) < 1e-5 and torch.equal(out, out2)


def test_float64_and_empty_inputs_take_the_shifted_conv(monkeypatch):
    monkeypatch.setattr(cuda, "_check_device", lambda x: None)
    x, w, h0 = torch.randn(2, 3, 7).double(), torch.randn(3, 4).double(), torch.randn(2, 3, 3).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, final = cuda.causal_conv1d_cuda(x, w, activation="silu", initial_states=h0, return_final_states=True)
    ref, ref_final = causal_conv1d_ref(x, w, activation="silu", initial_states=h0, return_final_states=True)
    assert out.dtype == torch.float64 and rel_err(out, ref) < 1e-12 and torch.equal(final, ref_final)
    assert cuda.causal_conv1d_cuda(torch.randn(1, 3, 0), torch.randn(3, 4)).shape == (1, 3, 0)


# ----------------------------------------------------------------------------- on a GPU


def _gpu_x(layout, batch, dim, L, dtype):
    if layout == "mamba1":
        return torch.randn(batch, 2 * dim, L, device="cuda").to(dtype)[:, :dim]
    if layout == "mamba2":
        return torch.randn(batch, L, dim + 24, device="cuda").to(dtype)[:, :, 16:16 + dim].transpose(1, 2)
    return torch.randn(batch, dim, L, device="cuda").to(dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU of compute capability 8.0+")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "mamba1", "mamba2"])
@pytest.mark.parametrize("shape", [(2, 24, 203, 4), (1, 300, 1029, 4), (2, 64, 2048, 4), (3, 16, 7, 4)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("h0", [False, True], ids=["no_h0", "h0"])
def test_gpu_matches_reference(shape, layout, dtype, h0):
    _gpu_case(shape, layout, dtype, h0)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU of compute capability 8.0+")
@pytest.mark.parametrize("width", [2, 3])
@pytest.mark.parametrize("layout", ["mamba1", "mamba2"])
def test_gpu_other_widths(width, layout):
    _gpu_case((2, 40, 301, width), layout, torch.bfloat16, True)


def _gpu_case(shape, layout, dtype, h0):
    batch, dim, L, W = shape
    x = _gpu_x(layout, batch, dim, L, dtype)
    t = dict(x=x, weight=torch.randn(dim, W, device="cuda"), bias=torch.randn(dim, device="cuda"),
             initial_states=torch.randn(batch, dim, W - 1, device="cuda") if h0 else None)
    dout = torch.randn(batch, dim, L, device="cuda").to(dtype)

    def run(fn, tensors):
        leaves = {k: v.detach().requires_grad_(True) if v is not None else None for k, v in tensors.items()}
        out = fn(leaves["x"], leaves["weight"], bias=leaves["bias"], activation="silu",
                 initial_states=leaves["initial_states"])
        out.backward(dout.to(out.dtype))
        return out, {k: v.grad for k, v in leaves.items() if v is not None}

    got, got_g = run(cuda.causal_conv1d_cuda, t)
    ref, ref_g = run(causal_conv1d_ref, {k: None if v is None else v.double() for k, v in t.items()})
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel_err(got, ref) < tol
    for k in ref_g:
        assert rel_err(got_g[k], ref_g[k]) < tol, k
