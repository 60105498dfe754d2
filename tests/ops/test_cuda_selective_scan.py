"""The run-time compiled CUDA selective scan (ops/selective_scan/cuda.py, ops/_cuda_rtc.py).

Without a GPU (CI): every shipped specialization compiles for sm_90 (nvcc, or NVRTC when
its library loads; skipped when neither exists) with ptxas' spill report checked; the
disk cache's keys and folders; the fallback to Triton with one warning; the argument
checks; the kernel parameter structs filled completely. On a GPU (``-m gpu``; the device
script benchmarks/device/issue16_cuda_scan.sh runs these and a wider check): forward and
gradients against the float64 reference.
"""
from __future__ import annotations

import ctypes
import os
import warnings

import pytest
import torch

from mimetic.ops import _cuda_rtc, selective_scan
from mimetic.ops.selective_scan import AUTO_CUDA_MIN_ROWS, auto_backend, cuda
from mimetic.ops.selective_scan.reference import selective_scan_ref

from .cuda_compile import ARCH, COMPILER, assert_no_spills, compile_shipped, needs_compiler
from .numerics import rel_err

GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= cuda.MIN_CAPABILITY


# ----------------------------------------------------------------------------- compile


@pytest.fixture(scope="module")
def compiled_all():
    return compile_shipped(cuda, "all")


@needs_compiler
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_every_specialization_compiles_without_spills(compiled_all, direction):
    specs, found, log = compiled_all[direction]
    assert_no_spills(specs, found, log)


@needs_compiler
def test_loader_compiles_and_caches(tmp_path, monkeypatch):
    """The loader's own path (-D macros, one unmangled entry) for the main specializations;
    a second process (memo cleared) reads the cubin from disk."""
    monkeypatch.setenv("MIMETIC_CUDA_CACHE", str(tmp_path))
    monkeypatch.setattr(_cuda_rtc, "_MEMO", {})
    specs = [cuda.Spec("fwd", 1, 1, cuda.FWD_LAYOUTS["A"], 16), cuda.Spec("bwd", 1, 1, cuda.BWD_LAYOUTS["A"], 8)]
    for spec in specs:
        first = cuda.compiled(spec, ARCH, COMPILER)
        assert not first.from_cache and first.cubin[:4] == b"\x7fELF"
        assert spec.entry.encode() in first.cubin          # the extern "C" entry point
        res = _cuda_rtc.ptxas_resources(first.log)
        assert res.get("spill_stores") == 0 and res.get("spill_loads") == 0, first.log
        assert list(tmp_path.glob(f"{spec.name}-*.cubin")) and list(tmp_path.glob(f"{spec.name}-*.log"))
        assert cuda.compiled(spec, ARCH, COMPILER) is first       # this process' memo
        monkeypatch.setattr(_cuda_rtc, "_MEMO", {})
        again = cuda.compiled(spec, ARCH, COMPILER)
        assert again.from_cache and again.cubin == first.cubin and again.key == first.key


def test_nvrtc_flags_turn_its_own_cache_off():
    """NVRTC 12.9+ serves repeated compiles from a cache of its own, with an empty log: no
    ptxas report, so the spill checks would read nothing. Its cache is off from 12.9 on."""
    assert _cuda_rtc._nvrtc_flags("12.8") == ["--ptxas-options=-v"]
    assert _cuda_rtc._nvrtc_flags("11.8") == ["--ptxas-options=-v"]
    for version in ("12.9", "13.0", "13"):
        assert _cuda_rtc._nvrtc_flags(version) == ["--ptxas-options=-v", "--no-cache"]


def test_cache_key_and_folder(tmp_path, monkeypatch):
    comp = _cuda_rtc.Compiler("nvrtc", "libnvrtc.so", "13.0")
    key = _cuda_rtc.cache_key("src", ["-DX=1"], "sm_90", comp)
    assert key == _cuda_rtc.cache_key("src", ["-DX=1"], "sm_90", comp)
    others = [_cuda_rtc.cache_key("src2", ["-DX=1"], "sm_90", comp),
              _cuda_rtc.cache_key("src", ["-DX=2"], "sm_90", comp),
              _cuda_rtc.cache_key("src", ["-DX=1"], "sm_80", comp),
              _cuda_rtc.cache_key("src", ["-DX=1"], "sm_90", _cuda_rtc.Compiler("nvrtc", "x", "13.1")),
              _cuda_rtc.cache_key("src", ["-DX=1"], "sm_90", _cuda_rtc.Compiler("nvcc", "x", "13.0"))]
    assert len({key, *others}) == 6
    monkeypatch.delenv("MIMETIC_CUDA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cuda_rtc.cache_dir() == tmp_path / "xdg" / "mimetic" / "cuda"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _cuda_rtc.cache_dir() == tmp_path / "home" / ".cache" / "mimetic" / "cuda"
    monkeypatch.setenv("MIMETIC_CUDA_CACHE", str(tmp_path / "mine"))
    assert _cuda_rtc.cache_dir() == tmp_path / "mine"


def test_cache_survives_an_unwritable_folder(tmp_path, monkeypatch):
    """A cache folder that cannot be created costs the cache, not the kernel."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MIMETIC_CUDA_CACHE", str(blocker / "sub"))
    monkeypatch.setattr(_cuda_rtc, "_MEMO", {})

    class Fake:
        kind, version = "nvcc", "0"

        def compile(self, source, name, options, arch):
            return b"\x7fELFcubin", "ptxas info    : Used 10 registers"

    got = _cuda_rtc.compile_cached("src", "k", [], ARCH, Fake())
    assert got.cubin == b"\x7fELFcubin" and not got.from_cache


def test_no_compiler_is_an_unavailable_error(monkeypatch):
    monkeypatch.setattr(_cuda_rtc, "find_compiler", lambda kind=None: None)
    with pytest.raises(_cuda_rtc.CudaRtcUnavailable, match="no CUDA compiler"):
        _cuda_rtc.compile_cached("src", "k", [], ARCH)


def test_compiler_choice_is_checked(monkeypatch):
    monkeypatch.setenv("MIMETIC_CUDA_COMPILER", "clang")
    with pytest.raises(ValueError, match="MIMETIC_CUDA_COMPILER"):
        _cuda_rtc.find_compiler()


def test_ptxas_report_parsing():
    log = ("ptxas info    : Function properties for k\n"
           "    8 bytes stack frame, 16 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 168 registers, used 1 barriers, 8 bytes cumulative stack size\n")
    assert _cuda_rtc.ptxas_resources(log) == dict(registers=168, stack_bytes=8, spill_stores=16, spill_loads=12)


# ----------------------------------------------------------------------------- layouts and params


def test_layouts_and_configs():
    for layouts in (cuda.FWD_LAYOUTS, cuda.BWD_LAYOUTS):
        for lo in layouts.values():
            assert lo.channel_lanes * lo.time_lanes == 32 and lo.row_floats() % 4 == 0
            assert lo.row_floats() >= lo.chunk
    for f in cuda.FWD_LAYOUTS:
        for b in cuda.BWD_LAYOUTS:
            cuda.CudaScanConfig(f, b).check(need_grad=True)    # every pair stores the backward's chunks
    with pytest.raises(ValueError, match="unknown layouts"):
        cuda.CudaScanConfig("Z", "A").check(need_grad=False)
    with pytest.raises(ValueError, match="channel_lanes"):
        cuda.Layout(4, 4, 8, 4, 2)
    with pytest.raises(ValueError, match="states_per_pass"):
        cuda.Layout(4, 8, 8, 4, 2, 3)
    # every forward layout name has a backward one (the benchmark pairs them by name); a
    # spec compiles once however many names share its layout, and names are distinct
    assert set(cuda.FWD_LAYOUTS) == set(cuda.BWD_LAYOUTS)
    specs = cuda.shipped_specs()
    assert len({s.name for s in specs}) == len(set(specs)) == len(specs)
    assert {s.layout.states_per_pass for s in specs} == {1, 2}
    assert all(s.ng % s.layout.states_per_pass == 0 for s in specs)
    # the default layouts' shared memory fits an H100/H200 block (227 KB) at every d_state
    for rows in ((1, 1536), (8, 1536), (8, 5120)):
        for n in range(1, cuda.MAX_STATE + 1):
            for spec in cuda._specs(torch.bfloat16, torch.bfloat16, n,
                                    cuda.default_config(torch.empty(*rows, 1), n), True):
                assert spec.smem_bytes(n) <= 227 * 1024, (rows, n, spec.name)


def test_param_structs_are_read_from_the_source():
    fwd = [n for n, _ in cuda.FwdParams._fields_]
    bwd = [n for n, _ in cuda.BwdParams._fields_]
    assert fwd[:3] == ["u", "delta", "A"] and fwd[-2:] == ["softplus", "vec"]
    assert "dh0" in bwd and bwd[-1] == "vec"
    assert ctypes.sizeof(cuda.FwdParams) == 8 * len(fwd) and ctypes.sizeof(cuda.BwdParams) == 8 * len(bwd)
    with pytest.raises(TypeError, match="missing"):
        cuda._params(cuda.FwdParams, u=0)


class _Recorder:
    """Stands in for a loaded kernel: records the launch instead of running it."""

    def __init__(self):
        self.calls = []

    def launch(self, grid, block, smem, params, device):
        self.calls.append((grid, block, smem, {n: getattr(params, n) for n, _ in params._fields_}))


def _inputs(batch=2, dim=12, L=37, n=5, groups=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    bc = (batch, n, L) if groups is None else (batch, groups, n, L)
    return dict(u=r(batch, dim, L).to(dtype), delta=(0.5 * r(batch, dim, L) - 1).to(dtype),
                A=-torch.exp(0.5 * r(dim, n)), B=r(*bc).to(dtype), C=r(*bc).to(dtype), D=r(dim),
                z=r(batch, dim, L).to(dtype), delta_bias=0.3 * r(dim) - 1, initial_state=r(batch, dim, n))


def test_launch_parameters_without_a_gpu():
    """The launchers fill every field, size the grid by group and the checkpoints by the
    backward's chunk (CPU tensors: only pointers and sizes are read)."""
    t = _inputs(batch=2, dim=12, L=37, n=5, groups=3, dtype=torch.bfloat16)
    config = cuda.CudaScanConfig("A", "A")
    prep = cuda._prepared(*(t[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")))
    u, delta, A, B, C, D, z, bias, h0 = prep
    fwd_spec, bwd_spec = cuda._specs(u.dtype, B.dtype, 5, config, True)
    rec = _Recorder()
    out, last, ckpt = cuda._forward(rec, fwd_spec, u, delta, A, B, C, D, z, bias, h0, True, True, True, config)
    (grid, block, smem, p), = rec.calls
    assert grid == (3 * 1, 2, 1) and block == (128, 1, 1) and smem == fwd_spec.smem_bytes(5)
    assert p["dpg"] == 4 and p["groups"] == 3 and p["blocks_per_group"] == 1
    assert p["ck_steps"] == 64 and p["n_ck"] == 1 and ckpt.shape == (2, 2, 12, 5)
    assert p["vec"] == 0   # L = 37 bf16 rows are not 16-byte aligned
    assert p["out"] == out.data_ptr() and p["last"] == last.data_ptr() and p["h0"] == h0.data_ptr()
    assert p["B_sg"] == B.stride(1) and p["softplus"] == 1
    rec = _Recorder()
    dout = torch.randn(2, 12, 37).to(torch.bfloat16)
    grads = cuda._backward(rec, bwd_spec, u, delta, A, B, C, D, z, bias, ckpt, True, dout, None, True)
    (grid, block, smem, p), = rec.calls
    assert grid == (3, 2, 1) and smem == bwd_spec.smem_bytes(5) and p["dlast"] == 0 and p["n_ck"] == 1
    du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = grads
    assert dA.shape == (12, 5) and dB.shape == (2, 3, 5, 37) and dD.shape == (12,) and dh0.shape == (2, 12, 5)
    # the configs' chunk: 8 x 8 steps for backward layout A; B takes 128-step chunks
    assert cuda.checkpoint_shape(u, A, cuda.CudaScanConfig("A", "B")) == (2, 2, 12, 5)


def test_default_config():
    assert cuda.default_config(torch.empty(8, 1536, 1), 16) == cuda.CudaScanConfig("A2", "A2")
    assert cuda.default_config(torch.empty(1, 1536, 1), 16) == cuda.CudaScanConfig("B2", "B2")
    assert cuda.default_config(torch.empty(2, 1536, 1), 16) == cuda.CudaScanConfig("A2", "A2")
    assert cuda.default_config(torch.empty(2, 1536, 1), 128) == cuda.CudaScanConfig("A2", "A2")
    assert cuda.default_config(torch.empty(8, 5120, 1), 16) == cuda.CudaScanConfig("C2", "A2")
    assert cuda.default_config(torch.empty(8, 5120, 1), 128) == cuda.CudaScanConfig("A", "A")


def test_auto_backend_routing(monkeypatch):
    """"auto" on CUDA: the CUDA kernels for every scan with a gradient and for forwards of
    many rows, Triton for forwards of few rows and for float64; the CPU keeps "torch"."""
    import types

    monkeypatch.setattr("mimetic.ops._dispatch._triton_available", lambda: True)

    def fake_cuda(batch, dim, dtype=torch.float32):  # what auto_backend and resolve_backend read
        return types.SimpleNamespace(is_cuda=True, dtype=dtype, shape=(batch, dim, 64))

    leaf = torch.zeros(1, requires_grad=True)
    few, many = fake_cuda(1, AUTO_CUDA_MIN_ROWS - 1), fake_cuda(2, AUTO_CUDA_MIN_ROWS // 2)
    assert auto_backend(few, (leaf,)) == "cuda"
    assert auto_backend(few, (leaf.detach(),)) == "triton"
    assert auto_backend(many, (leaf.detach(),)) == "cuda"
    with torch.no_grad():
        assert auto_backend(few, (leaf,)) == "triton"
    assert auto_backend(fake_cuda(8, 8192, torch.float64), (leaf,)) == "triton"
    assert auto_backend(torch.zeros(8, 8192, 2), (leaf,)) == "torch"


# ----------------------------------------------------------------------------- fallback and checks


def test_cpu_tensors_are_refused():
    t = _inputs()
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], backend="cuda")


def _call(fn, t, **kw):
    return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"], delta_bias=t["delta_bias"],
              delta_softplus=True, initial_state=t["initial_state"], return_last_state=True, **kw)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the Triton fallback runs on the CPU "
                    "only under TRITON_INTERPRET=1")
def test_fallback_warns_once_and_matches_the_reference(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setattr(cuda, "_check_device", lambda u: None)          # pretend these are CUDA tensors
    monkeypatch.setattr(cuda, "_environment_problem", lambda device: "no CUDA compiler: test")
    monkeypatch.setattr(cuda, "_WARNED", set())
    t = _inputs(batch=1, dim=4, L=9, n=3)
    ref_out, ref_last = _call(selective_scan_ref, t)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, last = _call(selective_scan, t, backend="cuda")
        out2, _ = _call(selective_scan, t, backend="cuda")
    mine = [w for w in caught if "CUDA selective scan" in str(w.message)]
    assert len(mine) == 1 and "no CUDA compiler: test" in str(mine[0].message)
    assert mine[0].filename == __file__     # pointed at the line that called the op
    assert "Triton" in str(mine[0].message)
    assert rel_err(out, ref_out) < 1e-5 and rel_err(last, ref_last) < 1e-5 and torch.equal(out, out2)


def test_unsupported_sizes_fall_back(monkeypatch):
    """d_state > 256 is a fallback (with its own warning), before any GPU call."""
    monkeypatch.setattr(cuda, "_WARNED", set())
    calls = []
    monkeypatch.setattr(cuda, "_check_device", lambda u: None)
    monkeypatch.setattr(cuda, "_fallback", lambda *a, **k: calls.append(a) or "fallback")
    t = _inputs(batch=1, dim=2, L=3, n=257)
    with pytest.warns(RuntimeWarning, match="d_state 257 > 256"):
        assert cuda.selective_scan_cuda(t["u"], t["delta"], t["A"], t["B"], t["C"]) == "fallback"
    assert len(calls) == 1


def test_float64_and_empty_inputs_take_the_chunked_scan(monkeypatch):
    monkeypatch.setattr(cuda, "_check_device", lambda u: None)
    t = {k: v.double() for k, v in _inputs(batch=1, dim=3, L=6, n=2).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, last = _call(cuda.selective_scan_cuda, t)
    ref_out, ref_last = _call(selective_scan_ref, t)
    assert out.dtype == torch.float64 and rel_err(out, ref_out) < 1e-12 and rel_err(last, ref_last) < 1e-12
    empty = _inputs(batch=1, dim=3, L=0, n=2)
    out, last = _call(cuda.selective_scan_cuda, empty)
    assert out.shape == (1, 3, 0) and torch.allclose(last, empty["initial_state"])


# ----------------------------------------------------------------------------- on a GPU


def _gpu_case(batch, dim, L, n, groups, dtype, z=True, D=True, bias=True, h0=True, last=True, config=None):
    t = {k: v.cuda() for k, v in _inputs(batch, dim, L, n, groups, dtype).items()}
    if not z:
        t["z"] = None
    if not D:
        t["D"] = None
    if not bias:
        t["delta_bias"] = None
    if not h0:
        t["initial_state"] = None
    dout = torch.randn(batch, dim, L, device="cuda").to(dtype)
    dlast = torch.randn(batch, dim, n, device="cuda") if last else None

    def run(fn, tensors, **kw):
        leaves = {k: v.detach().clone().requires_grad_(True) if v is not None else None for k, v in tensors.items()}
        outs = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], D=leaves["D"],
                  z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=True,
                  initial_state=leaves["initial_state"], return_last_state=last, **kw)
        outs = outs if isinstance(outs, tuple) else (outs,)
        grads_out = [dout] + ([dlast] if last else [])
        torch.autograd.backward(list(outs), [g.to(o.dtype) for g, o in zip(grads_out, outs)])
        return outs, {k: v.grad for k, v in leaves.items() if v is not None}

    got, got_g = run(cuda.selective_scan_cuda, t, config=config)
    ref, ref_g = run(selective_scan_ref, {k: None if v is None else v.double() for k, v in t.items()})
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for a, b in zip(got, ref):
        assert rel_err(a, b) < tol
    for k in ref_g:
        assert rel_err(got_g[k], ref_g[k]) < tol, k


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU of compute capability 8.0+")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", sorted(cuda.FWD_LAYOUTS))
@pytest.mark.parametrize("shape", [(2, 24, 200, 16, None), (1, 40, 67, 5, 2), (2, 16, 129, 33, 4)],
                         ids=lambda s: "x".join(map(str, s[:4])) + f"g{s[4]}")
def test_gpu_matches_reference(shape, layout, dtype):
    _gpu_case(*shape, dtype, config=cuda.CudaScanConfig(layout, layout))


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU of compute capability 8.0+")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 24, 200, 16, None), (2, 16, 129, 33, 4)],
                         ids=lambda s: "x".join(map(str, s[:4])) + f"g{s[4]}")
def test_gpu_mixed_pair_matches_reference(shape, dtype):
    """The C2 forward with the A2 backward (the default at very many rows: the fastest pair measured there)."""
    _gpu_case(*shape, dtype, config=cuda.CudaScanConfig("C2", "A2"))


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU of compute capability 8.0+")
@pytest.mark.parametrize("opts", [dict(z=False), dict(D=False, bias=False), dict(h0=False, last=False)],
                         ids=["no_z", "no_D_bias", "no_states"])
def test_gpu_optional_arguments(opts):
    _gpu_case(2, 24, 100, 16, None, torch.float32, **opts)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU of compute capability 8.0+")
def test_gpu_graph_capture_of_forward_and_backward():
    """A forward + backward captured as one CUDA graph (as the packed training step is)
    and replayed on new inputs gives what eager calls give, bit for bit."""
    t = {k: v.cuda() for k, v in _inputs(2, 64, 150, 16, None, torch.bfloat16).items()}
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
    dout = torch.randn(2, 64, 150, device="cuda").to(torch.bfloat16)

    def step():
        for v in leaves.values():
            v.grad = None
        out = _call(selective_scan, leaves, backend="auto")[0]
        out.backward(dout)
        return out.detach(), {k: v.grad for k, v in leaves.items()}

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()                                   # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, grads = step()
    fresh = {k: v.cuda() for k, v in _inputs(2, 64, 150, 16, None, torch.bfloat16, seed=7).items()}
    with torch.no_grad():
        for k, v in leaves.items():
            v.copy_(fresh[k])
    graph.replay()
    want, want_g = step()
    assert torch.equal(out, want)
    for k in want_g:
        assert torch.equal(grads[k], want_g[k]), k


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU of compute capability 8.0+")
@pytest.mark.parametrize("shape", [(8, 1536, 2048, 16), (1, 1536, 8192, 16), (8, 5120, 512, 16), (2, 256, 300, 256)],
                         ids=lambda s: "x".join(map(str, s)))
def test_gpu_real_sizes_match_triton(shape):
    """At real sizes (the default layouts) the kernels agree with the Triton scan, whose
    own accuracy the Triton tests establish, to float32 round-off over long sequences."""
    pytest.importorskip("triton")
    from mimetic.ops.selective_scan.triton import selective_scan_triton

    b, d, L, n = shape
    t = {k: v.cuda() for k, v in _inputs(b, d, L, n, None, torch.float32).items()}
    dout = torch.randn(b, d, L, device="cuda")

    def run(fn):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
        out, last = _call(fn, leaves)
        torch.autograd.backward([out, last], [dout, torch.zeros_like(last)])
        return [out, last] + [leaves[k].grad for k in sorted(leaves)]

    for name, a, b_ in zip(["out", "last"] + sorted(t), run(cuda.selective_scan_cuda), run(selective_scan_triton)):
        assert rel_err(a, b_) < 1e-4, name


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU of compute capability 8.0+")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_compiled_scan_runs_the_kernels(monkeypatch, dtype):
    """Under torch.compile (inductor) ``backend="auto"`` with a gradient launches the CUDA
    kernels, forward and backward, and gives the eager call's outputs and gradients. dB and
    dC are float32 sums of atomic adds, whose order differs between runs: float32 round-off,
    and where B is bfloat16 the rounding of two such sums may differ by one bfloat16 ulp
    (at most 2^-7 of the value), so those are compared elementwise to that bound."""
    calls = []
    for name in ("selective_scan_cuda_fwd", "selective_scan_cuda_bwd"):
        fn = getattr(cuda, name)
        monkeypatch.setattr(cuda, name, lambda *a, _fn=fn, _n=name, **kw: (calls.append(_n), _fn(*a, **kw))[1])
    torch._dynamo.reset()
    t = {k: v.cuda() for k, v in _inputs(8, 1536, 512, 16, None, dtype).items()}
    dout = torch.randn(8, 1536, 512, device="cuda").to(dtype)

    def run(fn):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
        out, last = fn(leaves)
        torch.autograd.backward([out, last], [dout, torch.zeros_like(last)])
        return [out, last] + [leaves[k].grad for k in sorted(leaves)]

    eager = lambda leaves: _call(selective_scan, leaves, backend="auto")  # noqa: E731
    want = run(eager)
    got = run(torch.compile(eager, fullgraph=True))
    torch._dynamo.reset()
    assert "selective_scan_cuda_fwd" in calls and "selective_scan_cuda_bwd" in calls
    for name, a, b in zip(["out", "last"] + sorted(t), got, want):
        assert a.dtype == b.dtype, name
        if name in ("B", "C") and dtype == torch.bfloat16:
            a, b = a.float(), b.float()
            bound = 2.0 ** -7 * b.abs() + 1e-5 * (b.abs() + b.pow(2).mean().sqrt())
            assert bool(((a - b).abs() <= bound).all()), name
        else:
            assert rel_err(a, b) < 1e-5, name
