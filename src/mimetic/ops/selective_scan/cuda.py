"""Mamba-1 selective scan as CUDA C++ kernels compiled at run time (``backend="cuda"``, and
what ``"auto"`` runs on CUDA for training, eager or under ``torch.compile``:
``selective_scan.auto_backend``; the compiled op's entry is in ``ops/_library.py``).

Same math as ``reference.py``; the kernels are ``cuda_src/scan_fwd.cu`` and
``cuda_src/scan_bwd.cu`` (after ``ops/cuda_src/common.cuh`` and ``cuda_src/common.cuh``),
compiled with NVRTC (or nvcc) on first use per specialization and cached on disk by
``ops/_cuda_rtc.py``. Design and expected speed: docs/kernels.md, "CUDA selective scan".

Specializations (the kernels' template parameters, passed as -D macros):

* the dtype of u / delta / z / out (float32, bfloat16, float16; computed in float32) and
  of B / C (the same, or float32);
* the layout (:class:`Layout`: channel-lanes x time-lanes per warp, steps per thread,
  warps per block, states per pass of the state loop), one of :data:`FWD_LAYOUTS` /
  :data:`BWD_LAYOUTS` by name;
* NG, the states staged in shared memory per group (:func:`state_group`); any d_state
  up to :data:`MAX_STATE` is walked in groups of NG.

Everything else (delta bias, softplus, D, z, initial / final state, B and C per batch or
per group, strides, L) is a kernel argument. Inputs may be strided views; only the time
axis must have unit stride (other layouts are copied once).

The forward stores, when a gradient is wanted, the float32 state entering every
``BWD_LAYOUTS[...].chunk``-th step (``(batch, n_ck + 1, dim, d_state)``, the last slot the
final state); the backward walks those chunks in reverse. dB / dC are summed into float32
buffers with one atomic add per (block, step, state); dA, dD and d(bias) come back per
batch row and are summed here.

Falls back to the Triton scan (PyTorch without Triton), with one warning per reason,
when no compiler or driver can be used, the GPU is older than compute capability 8.0,
d_state exceeds :data:`MAX_STATE`, or a kernel fails to compile. float64 inputs run on
the chunked PyTorch scan (the kernels compute in float32), as the Triton backend does.
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from .. import _cuda_rtc

__all__ = ["BWD_LAYOUTS", "FWD_LAYOUTS", "MAX_STATE", "CudaScanConfig", "Layout", "Spec",
           "selective_scan_cuda", "selective_scan_cuda_bwd", "selective_scan_cuda_fwd", "shipped_specs"]

SOURCE_DIR = Path(__file__).with_name("cuda_src")
SHARED_COMMON = _cuda_rtc.SHARED_COMMON
MAX_STATE = 256
MIN_CAPABILITY = (8, 0)          # cvt.rn.bf16.f32 and the shuffles' sync variants
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@dataclass(frozen=True)
class Layout:
    """Work split of a kernel: a warp is ``channel_lanes`` x ``time_lanes`` threads, each
    owning one channel and ``steps`` consecutive steps of a chunk; a block is ``warps``
    warps side by side in channels. ``min_blocks``: ``__launch_bounds__``' blocks per SM
    (caps the registers: 65536 / (32 warps min_blocks)). ``states_per_pass`` (the kernels'
    SI): states a pass of the state loop processes side by side, independent dependency
    chains for the scheduler to overlap, at the cost of registers (1: one at a time)."""

    channel_lanes: int
    time_lanes: int
    steps: int
    warps: int
    min_blocks: int
    states_per_pass: int = 1

    def __post_init__(self):
        if self.channel_lanes * self.time_lanes != 32 or self.steps % 4:
            raise ValueError(f"bad layout {self}: channel_lanes * time_lanes must be 32, steps a multiple of 4")
        if self.states_per_pass not in (1, 2):
            raise ValueError(f"bad layout {self}: states_per_pass must be 1 or 2")

    @property
    def channels(self) -> int:
        """Channels per block (C_b)."""
        return self.channel_lanes * self.warps

    @property
    def chunk(self) -> int:
        """Steps per chunk (T_c)."""
        return self.time_lanes * self.steps

    @property
    def threads(self) -> int:
        return 32 * self.warps

    def row_floats(self) -> int:
        """Floats per staged B / C row (common.cuh's row_floats: padded against bank conflicts)."""
        per_cycle = max(32 // self.steps, 1)
        off = self.time_lanes * self.steps + (self.time_lanes // per_cycle) * 4
        return off + (-off) % 4


# The design note's presets (../shared/kernel-design-mamba1.md): A for many channels, B for
# few channels and long L, C for very many channels (no cross-lane time scan). The backward
# holds more per step, so it takes 8 steps per thread and fewer channels per warp.
# A2: A with two states a pass (ncu found both kernels latency-bound on dependent chains,
# benchmarks/RESULTS.md); the forward's second chain needs more than A's 128 registers,
# so three blocks a SM, or A2k8's 8 steps a thread at four (the backward's A2 already
# takes 8: its A2k8 is A2, so every forward name has a backward one). B2 and C2: B and C
# with two states a pass (B2's forward at B's cap of 128 registers, C2's at three blocks a
# SM as A2's), for the few-row and very-many-row shapes where A2 is not the default.
FWD_LAYOUTS = {
    "A": Layout(4, 8, 16, 4, 4),
    "B": Layout(1, 32, 8, 8, 2),
    "C": Layout(32, 1, 16, 4, 4),
    "A2": Layout(4, 8, 16, 4, 3, 2),
    "A2k8": Layout(4, 8, 8, 4, 4, 2),
    "B2": Layout(1, 32, 8, 8, 2, 2),
    "C2": Layout(32, 1, 16, 4, 3, 2),
}
BWD_LAYOUTS = {
    "A": Layout(4, 8, 8, 4, 2),
    "B": Layout(2, 16, 8, 4, 2),
    "C": Layout(16, 2, 8, 4, 2),
    "A2": Layout(4, 8, 8, 4, 2, 2),
    "A2k8": Layout(4, 8, 8, 4, 2, 2),
    "B2": Layout(2, 16, 8, 4, 2, 2),
    "C2": Layout(16, 2, 8, 4, 2, 2),
}


@dataclass(frozen=True)
class CudaScanConfig:
    """Which layouts run: ``forward`` a key of :data:`FWD_LAYOUTS`, ``backward`` of
    :data:`BWD_LAYOUTS`. With a gradient the forward's steps per thread must divide the
    backward's chunk (the forward stores the backward's chunk-entry states)."""

    forward: str = "A"
    backward: str = "A"

    def check(self, need_grad: bool) -> None:
        if self.forward not in FWD_LAYOUTS or self.backward not in BWD_LAYOUTS:
            raise ValueError(f"unknown layouts in {self}; forward: {sorted(FWD_LAYOUTS)}, "
                             f"backward: {sorted(BWD_LAYOUTS)}")
        fwd, bwd = FWD_LAYOUTS[self.forward], BWD_LAYOUTS[self.backward]
        if need_grad and bwd.chunk % fwd.steps:
            raise ValueError(f"{self}: the forward's {fwd.steps} steps per thread do not divide the "
                             f"backward's chunk of {bwd.chunk} steps")


def default_config(u: torch.Tensor, d_state: int) -> CudaScanConfig:
    """Layouts by the number of (batch, channel) rows, as measured on an H200 and an H100
    (benchmarks/RESULTS.md, "CUDA selective scan", "A2 beside mamba_ssm" and "B2 and C2"):
    few rows (long sequences) take B2; very many take the C2 forward with the A2 backward
    (A / A above d_state 64: C's 128 channels per block would need more shared memory for
    their carries than a block has, and A2's forward is slower than A's there); others A2.
    Two states a pass beat one in each range: A2 over A by 10-15%, B2 over B by 9-10% in
    bfloat16 (5% in float32's forward + backward), C2 over C by 3-11%. At 3072 rows A's
    forward + backward beat B's by 13%. At 40960 the C2 forward with the A2 backward was the
    fastest pair in bfloat16 and float32, 1-4% ahead of C2 / C2 and of A2 / A2."""
    rows = u.shape[0] * u.shape[1]
    if rows <= 2048:
        return CudaScanConfig("B2", "B2")
    if rows < 32768:
        return CudaScanConfig("A2", "A2")
    return CudaScanConfig("C2", "A2") if d_state <= 64 else CudaScanConfig("A", "A")


def state_group(direction: str, d_state: int) -> int:
    """NG, the states staged per group: 16 in the forward, 8 in the backward (its per-warp
    dB / dC partials take W * NG * T_c floats each). The state loop inside a group is not
    unrolled and stops at d_state, so a smaller d_state costs only the staging of zero rows."""
    return 16 if direction == "fwd" else 8


@dataclass(frozen=True)
class Spec:
    """One compiled specialization: direction ("fwd" / "bwd"), dtype codes of u and of
    B / C (:data:`DTYPE_CODES`), layout and NG (a multiple of the layout's states per pass)."""

    direction: str
    dtype: int
    bc_dtype: int
    layout: Layout
    ng: int

    @property
    def name(self) -> str:
        lo = self.layout
        return (f"ss_{self.direction}_t{self.dtype}{self.bc_dtype}_cl{lo.channel_lanes}tl{lo.time_lanes}"
                f"kx{lo.steps}w{lo.warps}mb{lo.min_blocks}_ng{self.ng}si{lo.states_per_pass}")

    @property
    def entry(self) -> str:
        return f"mimetic_ss_{self.direction}"

    def template_args(self) -> tuple[int, ...]:
        """The template arguments of ``ss_<direction>_kernel`` in the source."""
        lo = self.layout
        return (self.dtype, self.bc_dtype, lo.channel_lanes, lo.time_lanes, lo.steps, lo.warps, lo.min_blocks,
                self.ng, lo.states_per_pass)

    def options(self) -> list[str]:
        lo = self.layout
        return ["-std=c++17", f"-DSS_T={self.dtype}", f"-DSS_TBC={self.bc_dtype}",
                f"-DSS_CL={lo.channel_lanes}", f"-DSS_TL={lo.time_lanes}", f"-DSS_KX={lo.steps}",
                f"-DSS_W={lo.warps}", f"-DSS_MIN_BLOCKS={lo.min_blocks}", f"-DSS_NG={self.ng}",
                f"-DSS_SI={lo.states_per_pass}"]

    def smem_bytes(self, d_state: int) -> int:
        """Dynamic shared memory of a launch (the kernels' carve-up, scan_fwd.cu / scan_bwd.cu)."""
        lo, ng = self.layout, self.ng
        per_channel = lo.channels * (d_state + 1)
        staged = 2 * ng * lo.row_floats()
        if self.direction == "fwd":
            return 4 * (staged + 2 * per_channel)
        return 4 * (staged + 2 * lo.warps * ng * lo.chunk + 3 * per_channel)


DTYPE_PAIRS = [(c, c) for c in DTYPE_CODES.values()] + [(c, 0) for c in DTYPE_CODES.values() if c]


def shipped_specs(direction: str | None = None) -> list[Spec]:
    """Every specialization a call can ask for (of one direction, or both): each layout,
    (u, B / C) dtype pair of :func:`_kernel_dtypes` and NG of :func:`state_group`; once
    each where two layout names share a layout."""
    specs = []
    for dirn, layouts in (("fwd", FWD_LAYOUTS), ("bwd", BWD_LAYOUTS)):
        if direction not in (None, dirn):
            continue
        for ng in sorted({state_group(dirn, n) for n in range(1, MAX_STATE + 1)}):
            for layout in layouts.values():
                for code, bc in DTYPE_PAIRS:
                    specs.append(Spec(dirn, code, bc, layout, ng))
    return list(dict.fromkeys(specs))


def instantiations_source(specs: list[Spec]) -> str:
    """One translation unit holding ``specs`` (all of one direction) as explicit
    instantiations of the template kernel: CI compiles every specialization with one
    compiler run per direction instead of one per specialization."""
    (direction,) = {s.direction for s in specs}
    params = "SsFwdParams" if direction == "fwd" else "SsBwdParams"
    lines = [source(direction)]
    for spec in specs:
        args = ", ".join(map(str, spec.template_args()))
        lines.append(f"template __global__ void ss_{direction}_kernel<{args}>(const {params});")
    return "\n".join(lines) + "\n"


def resources_by_spec(specs: list[Spec], log: str) -> dict[Spec, dict[str, int]]:
    """ptxas' registers / stack / spills of each instantiated spec, from the -v log of
    :func:`instantiations_source`'s compile (entries named by their mangled template
    arguments)."""
    found = _cuda_rtc.resources_by_template_args(log)
    return {spec: found[spec.template_args()] for spec in specs if spec.template_args() in found}


@cache
def source(direction: str) -> str:
    """The kernel source NVRTC sees: ops/cuda_src/common.cuh, cuda_src/common.cuh, then
    scan_<direction>.cu."""
    return "\n".join(p.read_text() for p in (SHARED_COMMON, SOURCE_DIR / "common.cuh",
                                             SOURCE_DIR / f"scan_{direction}.cu"))


def _param_struct(direction: str) -> type[ctypes.Structure]:
    """The kernel's parameter struct as a ctypes Structure, read from the source itself."""
    return _cuda_rtc.param_struct(source(direction), "SsFwdParams" if direction == "fwd" else "SsBwdParams")


FwdParams = _param_struct("fwd")
BwdParams = _param_struct("bwd")
_params = _cuda_rtc.make_params


def compiled(spec: Spec, arch: str, compiler: _cuda_rtc.Compiler | None = None) -> _cuda_rtc.Compiled:
    """spec's cubin for ``arch`` ("sm_90"), from the cache or compiled now."""
    return _cuda_rtc.compile_cached(source(spec.direction), spec.name, spec.options(), arch, compiler)


_KERNELS: dict[tuple[Spec, str], _cuda_rtc.Kernel] = {}


def _kernel(spec: Spec, device: torch.device) -> _cuda_rtc.Kernel:
    major, minor = torch.cuda.get_device_capability(device)
    arch = f"sm_{major}{minor}"
    key = (spec, arch)
    if key not in _KERNELS:
        _KERNELS[key] = _cuda_rtc.Kernel(compiled(spec, arch), spec.entry)
    return _KERNELS[key]


# ----------------------------------------------------------------------------- fallback


_Unavailable = _cuda_rtc.KernelUnavailable
_WARNED: set[str] = set()


def warn_fallback(reason: str) -> None:
    """The one warning that the kernels cannot run here and the Triton scan runs instead."""
    _cuda_rtc.warn_fallback(_WARNED, "CUDA selective scan", "Triton scan", reason)


def unavailable(u, delta, A, B, C, z, need_grad: bool, config: CudaScanConfig | None = None) -> str | None:
    """Why the kernels cannot run a call on these inputs (d_state, batch, GPU, compiler),
    or None; compiles them now where needed. Reads only devices, dtypes and shapes, so the
    ``torch.compile`` op's fake kernel asks it too and promises what the real call returns."""
    config = config or default_config(u, A.shape[1])
    config.check(need_grad)
    try:
        _kernels(u.device, u.shape[0], *_kernel_dtypes(u, delta, z, B, C), A.shape[1], config, need_grad)
    except _Unavailable as e:
        return str(e)
    return None


def output_like(u, z):
    """An empty ``out`` as the forward makes it: u's dtype, z's layout where there is a z."""
    return torch.empty_like(z if z is not None else u, dtype=u.dtype)


def _environment_problem(device: torch.device) -> str | None:
    """Why this device cannot run the kernels at all, or None (cached per device)."""
    return _cuda_rtc.environment_problem(device, MIN_CAPABILITY)


def _check_device(u: torch.Tensor) -> None:
    if not u.is_cuda:
        raise RuntimeError("backend='cuda' needs CUDA tensors (use backend='torch' on the CPU)")


def _fallback(*args, **kwargs):
    try:
        from .triton import selective_scan_triton as fn
    except ImportError:
        from .chunked import selective_scan_torch as fn
    return fn(*args, **kwargs)


# ----------------------------------------------------------------------------- layouts


def _unit_time(t):
    if t is None or t.stride(-1) == 1 or t.shape[-1] == 1:
        return t
    return t.contiguous()


def _rows_aligned(*tensors) -> bool:
    """All (b, d, L) tensors allow 16-byte vector access at every row start (the kernels'
    ``vec`` flag; KX steps are always a multiple of 16 bytes)."""
    for t in tensors:
        if t is None:
            continue
        es = t.element_size()
        if t.data_ptr() % 16 or (t.stride(0) * es) % 16 or (t.stride(1) * es) % 16:
            return False
    return True


def _kernel_dtypes(u, delta, z, B, C) -> tuple[torch.dtype, torch.dtype]:
    """(dtype of u / delta / z, dtype of B / C) in the kernels: the widest of u, delta and
    z; B and C in that dtype or float32 (a third dtype is widened to float32)."""
    kd = u.dtype
    for t in (delta, z):
        if t is not None:
            kd = torch.promote_types(kd, t.dtype)
    bcd = torch.promote_types(B.dtype, C.dtype)
    return kd, bcd if bcd in (kd, torch.float32) else torch.float32


def _prepared(u, delta, A, B, C, D, z, delta_bias, initial_state):
    """Inputs as the kernels read them (:func:`_kernel_dtypes`), unit time stride, B / C
    as (b, g, n, L), the small tensors float32 and contiguous."""
    kd, bcd = _kernel_dtypes(u, delta, z, B, C)
    f32 = lambda t: None if t is None else t.float().contiguous()  # noqa: E731
    u, delta = _unit_time(u.to(kd)), _unit_time(delta.to(kd))
    z = None if z is None else _unit_time(z.to(kd))
    B, C = _unit_time(B.to(bcd)), _unit_time(C.to(bcd))
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    return u, delta, f32(A), B, C, f32(D), z, f32(delta_bias), f32(initial_state)


def _ptr(t) -> int:
    return 0 if t is None else t.data_ptr()


def _specs(kd, bcd, N, config: CudaScanConfig, need_grad: bool) -> tuple[Spec, Spec | None]:
    code, bc = DTYPE_CODES[kd], DTYPE_CODES[bcd]
    fwd = Spec("fwd", code, bc, FWD_LAYOUTS[config.forward], state_group("fwd", N))
    bwd = Spec("bwd", code, bc, BWD_LAYOUTS[config.backward], state_group("bwd", N)) if need_grad else None
    return fwd, bwd


def _kernels(device, batch, kd, bcd, N, config, need_grad):
    """((spec, kernel) of the forward, (spec, kernel) of the backward or (None, None)) for
    a call on ``device`` with ``batch`` rows, kernel dtypes ``kd`` / ``bcd`` and d_state
    ``N``, compiled now if needed; raises _Unavailable where the call must fall back."""
    if N > MAX_STATE:
        raise _Unavailable(f"d_state {N} > {MAX_STATE}")
    if batch > 65535:
        raise _Unavailable(f"batch {batch} > 65535 (the grid's y dimension)")
    problem = _environment_problem(device)
    if problem:
        raise _Unavailable(problem)
    fwd, bwd = _specs(kd, bcd, N, config, need_grad)
    limit = getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 48 * 1024)
    try:
        kernels = []
        for spec in (fwd, bwd):
            if spec is None:
                kernels.append(None)
                continue
            if spec.smem_bytes(N) > limit:
                raise _Unavailable(f"{spec.name} needs {spec.smem_bytes(N)} bytes of shared memory "
                                   f"for d_state {N}, the GPU allows {limit}")
            kernels.append(_kernel(spec, device))
    except _cuda_rtc.CudaCompileError as e:
        raise _Unavailable(f"the kernel failed to compile: {str(e)[:2000]}") from e
    except _cuda_rtc.CudaRtcUnavailable as e:
        raise _Unavailable(str(e)) from e
    return (fwd, kernels[0]), (bwd, kernels[1])


# ----------------------------------------------------------------------------- launches


def checkpoint_shape(u, A, config: CudaScanConfig):
    """Shape of the float32 checkpoints the forward returns with a gradient."""
    batch, dim, L = u.shape
    return (batch, math.ceil(L / BWD_LAYOUTS[config.backward].chunk) + 1, dim, A.shape[1])


def _grid(u, B, layout: Layout):
    batch, dim, _ = u.shape
    groups = B.shape[1]
    dpg = dim // groups
    per_group = math.ceil(dpg / layout.channels)
    return (groups * per_group, batch, 1), dpg, per_group


def _forward(kernel, spec, u, delta, A, B, C, D, z, bias, h0, softplus, last, need_grad, config):
    batch, dim, L = u.shape
    N = A.shape[1]
    out = output_like(u, z)   # z's layout, as Triton's
    ck_steps = BWD_LAYOUTS[config.backward].chunk if need_grad else 1
    n_ck = math.ceil(L / ck_steps)
    ckpt = (torch.empty(batch, n_ck + 1, dim, N, device=u.device, dtype=torch.float32)
            if need_grad else None)
    hlast = torch.empty(batch, dim, N, device=u.device, dtype=torch.float32) if last else None
    grid, dpg, per_group = _grid(u, B, spec.layout)
    zz = z if z is not None else u
    p = _params(
        FwdParams,
        u=_ptr(u), delta=_ptr(delta), A=_ptr(A), B=_ptr(B), C=_ptr(C), D=_ptr(D), z=_ptr(z), bias=_ptr(bias),
        h0=_ptr(h0), out=_ptr(out), ckpt=_ptr(ckpt), last=_ptr(hlast),
        batch=batch, dim=dim, L=L, N=N, groups=B.shape[1], dpg=dpg, blocks_per_group=per_group,
        u_sb=u.stride(0), u_sd=u.stride(1), delta_sb=delta.stride(0), delta_sd=delta.stride(1),
        z_sb=zz.stride(0), z_sd=zz.stride(1), out_sb=out.stride(0), out_sd=out.stride(1),
        B_sb=B.stride(0), B_sg=B.stride(1), B_sn=B.stride(2), C_sb=C.stride(0), C_sg=C.stride(1),
        C_sn=C.stride(2), ck_steps=ck_steps, n_ck=n_ck if need_grad else 0, softplus=int(bool(softplus)),
        vec=int(_rows_aligned(u, delta, z, out)),
    )
    kernel.launch(grid, (spec.layout.threads, 1, 1), spec.smem_bytes(N), p, u.device)
    return out, hlast, ckpt


def _backward(kernel, spec, u, delta, A, B, C, D, z, bias, ckpt, softplus, dout, dlast, want_h0):
    batch, dim, L = u.shape
    G, N = B.shape[1], A.shape[1]
    dout = _unit_time(dout.to(u.dtype))
    dev = u.device
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    f32 = dict(device=dev, dtype=torch.float32)
    dA = torch.empty(batch, dim, N, **f32)
    dB = torch.zeros(batch, G, N, L, **f32)
    dC = torch.zeros(batch, G, N, L, **f32)
    dD = torch.empty(batch, dim, **f32) if D is not None else None
    dbias = torch.empty(batch, dim, **f32) if bias is not None else None
    dh0 = torch.empty(batch, dim, N, **f32) if want_h0 else None
    dlast = dlast.float().contiguous() if dlast is not None else None
    grid, dpg, per_group = _grid(u, B, spec.layout)
    zz, dzz = (z, dz) if z is not None else (u, du)
    p = _params(
        BwdParams,
        u=_ptr(u), delta=_ptr(delta), A=_ptr(A), B=_ptr(B), C=_ptr(C), D=_ptr(D), z=_ptr(z), bias=_ptr(bias),
        ckpt=_ptr(ckpt), dout=_ptr(dout), dlast=_ptr(dlast), du=_ptr(du), ddelta=_ptr(ddelta), dz=_ptr(dz),
        dA=_ptr(dA), dB=_ptr(dB), dC=_ptr(dC), dD=_ptr(dD), dbias=_ptr(dbias), dh0=_ptr(dh0),
        batch=batch, dim=dim, L=L, N=N, groups=G, dpg=dpg, blocks_per_group=per_group,
        u_sb=u.stride(0), u_sd=u.stride(1), delta_sb=delta.stride(0), delta_sd=delta.stride(1),
        z_sb=zz.stride(0), z_sd=zz.stride(1), dout_sb=dout.stride(0), dout_sd=dout.stride(1),
        du_sb=du.stride(0), du_sd=du.stride(1), ddelta_sb=ddelta.stride(0), ddelta_sd=ddelta.stride(1),
        dz_sb=dzz.stride(0), dz_sd=dzz.stride(1),
        B_sb=B.stride(0), B_sg=B.stride(1), B_sn=B.stride(2), C_sb=C.stride(0), C_sg=C.stride(1),
        C_sn=C.stride(2), n_ck=ckpt.shape[1] - 1, softplus=int(bool(softplus)),
        vec=int(_rows_aligned(u, delta, z, dout, du, ddelta, dz)),
    )
    kernel.launch(grid, (spec.layout.threads, 1, 1), spec.smem_bytes(N), p, dev)
    return du, ddelta, dA.sum(0), dB, dC, None if dD is None else dD.sum(0), dz, \
        None if dbias is None else dbias.sum(0), dh0


def selective_scan_cuda_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                            return_last_state, need_grad, config: CudaScanConfig | None = None):
    """The forward kernel on prepared-or-not inputs. Returns (out, last state or None,
    checkpoints or None); raises _Unavailable where the call must fall back."""
    config = config or default_config(u, A.shape[1])
    config.check(need_grad)
    out_dtype = u.dtype
    u, delta, A, B, C, D, z, delta_bias, initial_state = _prepared(u, delta, A, B, C, D, z, delta_bias,
                                                                   initial_state)
    (spec, kernel), _ = _kernels(u.device, u.shape[0], u.dtype, B.dtype, A.shape[1], config, need_grad)
    out, last, ckpt = _forward(kernel, spec, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                               return_last_state, need_grad, config)
    return out.to(out_dtype), last, ckpt


def selective_scan_cuda_bwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                            ckpt, dout, dhlast, config: CudaScanConfig | None = None):
    """Gradients of (u, delta, A, B, C, D, z, delta_bias, initial_state) in their inputs'
    shapes and dtypes (None for absent inputs), from :func:`selective_scan_cuda_fwd`'s
    checkpoints; ``config`` must be the forward's."""
    config = config or default_config(u, A.shape[1])
    config.check(True)
    originals = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    u, delta, A, B, C, D, z, delta_bias, initial_state = _prepared(*originals)
    _, (spec, kernel) = _kernels(u.device, u.shape[0], u.dtype, B.dtype, A.shape[1], config, True)
    grads = _backward(kernel, spec, u, delta, A, B, C, D, z, delta_bias, ckpt, delta_softplus, dout, dhlast,
                      initial_state is not None)
    result = []
    for g, t in zip(grads, originals):
        result.append(None if t is None else g.reshape(t.shape).to(t.dtype))
    return tuple(result)


class _SelectiveScanCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, return_last_state,
                config):
        need_grad = ctx.needs_input_grad is not None and any(ctx.needs_input_grad[:9])
        out, last, ckpt = selective_scan_cuda_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                                  delta_softplus, return_last_state, need_grad, config)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, ckpt)
            ctx.softplus, ctx.config = bool(delta_softplus), config
        return (out, last) if return_last_state else out

    @staticmethod
    def backward(ctx, dout, *rest):
        *inputs, ckpt = ctx.saved_tensors
        grads = selective_scan_cuda_bwd(*inputs, ctx.softplus, ckpt, dout, rest[0] if rest else None, ctx.config)
        return (*grads, None, None, None)


def selective_scan_cuda(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
    config: CudaScanConfig | None = None,
):
    """CUDA selective scan; same arguments and results as :func:`selective_scan_ref`.

    Shapes: u, delta, z (batch, dim, L); A (dim, n); B, C (batch, n, L) or
    (batch, groups, n, L); D, delta_bias (dim,); initial_state (batch, dim, n). Returns
    out (batch, dim, L) in u's dtype and, with ``return_last_state``, the final state
    (batch, dim, n) in float32. Differentiable in every tensor argument. ``config``: the
    layouts (None: :func:`default_config`). Falls back to the Triton scan, with one
    warning, where the kernels cannot run (see the module docstring).
    """
    _check_device(u)
    kwargs = dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                  return_last_state=return_last_state, initial_state=initial_state)
    if u.dtype == torch.float64 or u.numel() == 0:
        # float64 keeps float64 accuracy on the chunked scan; empty inputs have nothing to launch
        from .chunked import selective_scan_torch

        return selective_scan_torch(u, delta, A, B, C, **kwargs)
    config = config or default_config(u, A.shape[1])
    need_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state))
    problem = unavailable(u, delta, A, B, C, z, need_grad, config)  # compiles before autograd sees the call
    if problem is not None:
        warn_fallback(problem)
        return _fallback(u, delta, A, B, C, **kwargs)
    return _SelectiveScanCuda.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus,
                                    return_last_state, config)
