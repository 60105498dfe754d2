"""Causal depthwise conv1d (+ SiLU) as CUDA C++ kernels compiled at run time (opt-in:
``backend="cuda"``).

Same contract as ``reference.py``. The kernels are ``cuda_src/conv_fwd.cu`` and
``cuda_src/conv_bwd.cu`` (with ``cuda_src/conv_common.cuh``, after the ops' shared
``ops/cuda_src/common.cuh``: 16-bit float types, conversions, vector loads), compiled with NVRTC
(or nvcc) on first use per specialization and cached on disk by ``ops/_cuda_rtc.py``.
Design: docs/kernels.md, "CUDA causal conv1d".

The conv is memory-bound (W multiply-adds per element), so both kernels are built around
one pass over memory: the forward reads x once and writes out once; the backward reads x
and dout once and writes dx once, recomputing the pre-activation and its gradient in
registers (no float32 dpre round trip, unlike the two Triton kernels). Halos of W-1 steps
come from L1 (neighbouring lanes' data) or from the registers of a thread's own run.

Specializations (:class:`Spec`, the kernels' template parameters, passed as -D macros):
the dtype of x / out / dout / dx (float32, bfloat16, float16; computed in float32), the
width W (1 to :data:`MAX_WIDTH`) and the layout (:data:`LAYOUTS`): ``"L"`` for a unit time
stride (Mamba-1's (batch, d_inner, L)), ``"CL"`` for unit channel stride (Mamba-2's xBC,
a transposed (batch, L, conv_dim) slice of the in_proj output). Everything else (bias,
SiLU, initial states, the dtypes of weight / bias / initial states, strides, L) is a
kernel argument. Other layouts of x are copied once to contiguous.

dweight and dbias: each thread sums its steps in registers, the block adds its threads'
sums (shuffles, then shared memory), and one float32 atomic add per (block, channel,
tap) goes into a zeroed (dim, W) buffer. Why atomics rather than partial rows and a
second pass: the number of adds per address is small (batch x time blocks, a few dozen
at the layer sizes), it spares the partials' buffer and a reduction kernel; the price
is that the float32 sum order, and so dweight's last bits, can change from run to run.

Falls back to the Triton conv (PyTorch without Triton), with one warning per reason,
when no compiler or driver can be used, the GPU is older than compute capability 8.0,
the width exceeds :data:`MAX_WIDTH`, the grid is too large or a kernel fails to compile.
float64 inputs run on the shifted PyTorch conv (the kernels compute in float32).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from .. import _cuda_rtc
from .layout import channels_last, final_states, in_layout, like
from .shifted import causal_conv1d_torch

__all__ = ["LAYOUTS", "MAX_WIDTH", "Layout", "Spec", "causal_conv1d_cuda", "shipped_specs"]

SOURCE_DIR = Path(__file__).with_name("cuda_src")
SHARED_COMMON = _cuda_rtc.SHARED_COMMON
MAX_WIDTH = 8
CAP_WIDTH = 4                    # widths a layout's min_blocks applies to (see Layout)
MIN_CAPABILITY = (8, 0)          # cvt.rn.bf16.f32 and the shuffles' sync variants
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@dataclass(frozen=True)
class Layout:
    """A block of ``lc`` x ``lt`` threads, each owning ``c`` channels x ``s`` steps (see
    conv_common.cuh). ``cl``: unit channel stride (lanes across channels, each thread
    streams a run of steps); else unit time stride (lanes across time, one channel a
    block, s steps a thread as vectors). ``min_blocks``: ``__launch_bounds__``' blocks
    per SM (1: no cap below 255 registers; k: 65536 / (k threads) registers a thread),
    for widths up to :data:`CAP_WIDTH` (wider convs hold more per channel: uncapped)."""

    cl: bool
    lc: int
    lt: int
    c: int
    s: int
    min_blocks: int = 1

    def __post_init__(self):
        if 32 % self.lc or (self.lc * self.lt) % 32 or (not self.cl and (self.lc, self.c) != (1, 1)):
            raise ValueError(f"bad layout {self}: lc must divide 32, lc * lt be whole warps, "
                             f"and a time-contiguous layout has lc = c = 1")

    @property
    def threads(self) -> int:
        return self.lc * self.lt

    @property
    def channels(self) -> int:
        """Channels per block."""
        return self.lc * self.c if self.cl else 1


# "L": 128 threads along time, 8 steps each (a 16-byte vector of bf16; two of float32).
# "CL": 32 lanes across channels x 4 warps along time; the forward 8 channels a thread
# (16-byte bf16 vectors) with 4 steps loaded ahead; the backward 4 channels (it holds x,
# dout, two windows and the sums per channel; 8-byte bf16 vectors), 2 steps ahead, capped
# at 128 registers (4 blocks an SM; 4 steps ahead would need ~178 and allow 2 blocks).
# First choices from the sm_90 ptxas report, not timed: benchmarks/issue16_cuda_conv.py
# --sections tiles times the alternatives.
LAYOUTS = {
    "fwd": {"L": Layout(False, 1, 128, 1, 8), "CL": Layout(True, 32, 4, 8, 4)},
    "bwd": {"L": Layout(False, 1, 128, 1, 8), "CL": Layout(True, 32, 4, 4, 2, 4)},
}

# Steps per thread run in the "CL" layout: as long as the grid keeps at least this many
# threads (longer runs re-read fewer halo steps and, in the backward, issue fewer atomic
# adds per step). A first guess, to be tuned on the GPU (benchmarks/issue16_cuda_conv.py).
TARGET_THREADS = {"fwd": 1 << 18, "bwd": 1 << 17}
MAX_ITERS = 64


@dataclass(frozen=True)
class Spec:
    """One compiled specialization: direction ("fwd" / "bwd"), dtype code of x
    (:data:`DTYPE_CODES`), width and layout name (a key of :data:`LAYOUTS`)."""

    direction: str
    dtype: int
    width: int
    layout_name: str

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.direction][self.layout_name]

    @property
    def min_blocks(self) -> int:
        return self.layout.min_blocks if self.width <= CAP_WIDTH else 1

    @property
    def name(self) -> str:
        lo = self.layout
        return (f"cc_{self.direction}_t{self.dtype}_w{self.width}_{self.layout_name.lower()}"
                f"{lo.lc}x{lo.lt}c{lo.c}s{lo.s}mb{self.min_blocks}")

    @property
    def entry(self) -> str:
        return f"mimetic_cc_{self.direction}"

    def template_args(self) -> tuple[int, ...]:
        """The template arguments of ``cc_<direction>_kernel`` in the source."""
        lo = self.layout
        return (self.dtype, self.width, int(lo.cl), lo.lc, lo.lt, lo.c, lo.s, self.min_blocks)

    def options(self) -> list[str]:
        lo = self.layout
        return ["-std=c++17", f"-DCC_T={self.dtype}", f"-DCC_W={self.width}", f"-DCC_CL={int(lo.cl)}",
                f"-DCC_LC={lo.lc}", f"-DCC_LT={lo.lt}", f"-DCC_C={lo.c}", f"-DCC_S={lo.s}",
                f"-DCC_MIN_BLOCKS={self.min_blocks}"]

    def smem_bytes(self) -> int:
        """Dynamic shared memory of a launch: the backward's per-warp dw / dbias partials."""
        if self.direction == "fwd":
            return 0
        lo = self.layout
        return 4 * (lo.threads // 32) * lo.lc * lo.c * (self.width + 1)

    def vector_bytes(self, element_size: int) -> int:
        """Alignment a row needs for the kernels' vector access (their ``vec`` flag)."""
        lo = self.layout
        run = (lo.c if lo.cl else lo.s) * element_size
        return min(16, run)


def shipped_specs(direction: str | None = None) -> list[Spec]:
    """Every specialization a call can ask for (of one direction, or both)."""
    return [Spec(d, code, w, name)
            for d in ("fwd", "bwd") if direction in (None, d)
            for name in LAYOUTS[d] for code in DTYPE_CODES.values() for w in range(1, MAX_WIDTH + 1)]


@cache
def source(direction: str) -> str:
    """The kernel source NVRTC sees: ops/cuda_src/common.cuh, conv_common.cuh, conv_<direction>.cu."""
    return "\n".join(p.read_text() for p in (SHARED_COMMON, SOURCE_DIR / "conv_common.cuh",
                                             SOURCE_DIR / f"conv_{direction}.cu"))


def instantiations_source(specs: list[Spec]) -> str:
    """One translation unit holding ``specs`` (all of one direction) as explicit
    instantiations: CI compiles every specialization in one compiler run per direction."""
    (direction,) = {s.direction for s in specs}
    params = "CcFwdParams" if direction == "fwd" else "CcBwdParams"
    lines = [source(direction)]
    for spec in specs:
        args = ", ".join(map(str, spec.template_args()))
        lines.append(f"template __global__ void cc_{direction}_kernel<{args}>(const {params});")
    return "\n".join(lines) + "\n"


def resources_by_spec(specs: list[Spec], log: str) -> dict[Spec, dict[str, int]]:
    """ptxas' registers / stack / spills of each spec compiled by :func:`instantiations_source`."""
    found = _cuda_rtc.resources_by_template_args(log)
    return {spec: found[spec.template_args()] for spec in specs if spec.template_args() in found}


FwdParams = _cuda_rtc.param_struct(source("fwd"), "CcFwdParams")
BwdParams = _cuda_rtc.param_struct(source("bwd"), "CcBwdParams")


def compiled(spec: Spec, arch: str, compiler: _cuda_rtc.Compiler | None = None) -> _cuda_rtc.Compiled:
    """spec's cubin for ``arch`` ("sm_90"), from the cache or compiled now."""
    return _cuda_rtc.compile_cached(source(spec.direction), spec.name, spec.options(), arch, compiler)


_KERNELS: dict[tuple[Spec, Layout, str], _cuda_rtc.Kernel] = {}


def _kernel(spec: Spec, device: torch.device) -> _cuda_rtc.Kernel:
    # keyed by the layout too: a benchmark may try other tiles under a layout's name
    key = (spec, spec.layout, _cuda_rtc.device_arch(device))
    if key not in _KERNELS:
        _KERNELS[key] = _cuda_rtc.Kernel(compiled(spec, key[2]), spec.entry)
    return _KERNELS[key]


# ----------------------------------------------------------------------------- fallback


_Unavailable = _cuda_rtc.KernelUnavailable
_WARNED: set[str] = set()


def _warn_fallback(reason: str) -> None:
    _cuda_rtc.warn_fallback(_WARNED, "CUDA causal conv1d", "Triton conv", reason)


def _check_device(x: torch.Tensor) -> None:
    if not x.is_cuda:
        raise RuntimeError("backend='cuda' needs CUDA tensors (use backend='torch' on the CPU)")


def _fallback(*args, **kwargs):
    try:
        from .triton import causal_conv1d_triton as fn
    except ImportError:
        fn = causal_conv1d_torch
    return fn(*args, **kwargs)


def _kernels(device: torch.device, specs: list[Spec | None]) -> list[_cuda_rtc.Kernel | None]:
    """The kernels of ``specs`` (None stays None) on ``device``, compiled now if needed;
    raises _Unavailable where the call must fall back."""
    problem = _cuda_rtc.environment_problem(device, MIN_CAPABILITY)
    if problem:
        raise _Unavailable(problem)
    try:
        return [None if s is None else _kernel(s, device) for s in specs]
    except _cuda_rtc.CudaCompileError as e:
        raise _Unavailable(f"the kernel failed to compile: {str(e)[:2000]}") from e
    except _cuda_rtc.CudaRtcUnavailable as e:
        raise _Unavailable(str(e)) from e


# ----------------------------------------------------------------------------- launches


def _ptr(t) -> int:
    return 0 if t is None else t.data_ptr()


def _code(t) -> int:
    return 0 if t is None else DTYPE_CODES[t.dtype]


def _small(t: torch.Tensor | None) -> torch.Tensor | None:
    """weight / bias / initial states as the kernels read them: contiguous, in a dtype
    they know (float64 and others widened to float32: they are small)."""
    if t is None:
        return None
    return (t if t.dtype in DTYPE_CODES else t.float()).contiguous()


def _unit_layout(x: torch.Tensor) -> torch.Tensor:
    """x as is with unit time or channel stride, else contiguous."""
    return x if x.stride(2) == 1 or x.stride(1) == 1 else x.contiguous()


def _specs(x: torch.Tensor, width: int, need_grad: bool) -> tuple[Spec, Spec | None]:
    name = "CL" if channels_last(x) else "L"
    code = DTYPE_CODES[x.dtype]
    return Spec("fwd", code, width, name), Spec("bwd", code, width, name) if need_grad else None


def _aligned(spec: Spec, *tensors: torch.Tensor) -> bool:
    """Every (batch, dim, L) tensor allows the spec's vector access at each of its rows:
    the pointer, the batch stride and the stride of the rows' other axis (channels in
    the time-contiguous layout, time in the channel-contiguous one) in whole vectors."""
    other = 2 if spec.layout.cl else 1
    for t in tensors:
        vb = spec.vector_bytes(t.element_size())
        es = t.element_size()
        if t.data_ptr() % vb or (t.stride(0) * es) % vb or (t.stride(other) * es) % vb:
            return False
    return True


def _grid(spec: Spec, batch: int, dim: int, L: int) -> tuple[tuple[int, int, int], int]:
    """(grid, iters): time blocks x channel blocks x batch; see :data:`TARGET_THREADS`."""
    lo = spec.layout
    cblocks = math.ceil(dim / lo.channels)
    if not lo.cl:
        iters = 1
    else:
        runs1 = math.ceil(L / (lo.lt * lo.s))            # time blocks at one S-step chunk a run
        threads1 = batch * cblocks * lo.threads * runs1
        iters = max(1, min(MAX_ITERS, threads1 // TARGET_THREADS[spec.direction], math.ceil(L / lo.s)))
    steps = iters * lo.lt * lo.s
    grid = (math.ceil(L / steps), cblocks, batch)
    if grid[1] > 65535 or grid[2] > 65535:
        raise _Unavailable(f"grid {grid} exceeds 65535 blocks in y or z (dim or batch too large)")
    return grid, iters


def _strides(prefix: str, t: torch.Tensor) -> dict[str, int]:
    return {f"{prefix}_sb": t.stride(0), f"{prefix}_sd": t.stride(1), f"{prefix}_sl": t.stride(2)}


def _forward(kernel, spec, x, w, bias, h0, silu):
    batch, dim, L = x.shape
    out = like(x)
    grid, iters = _grid(spec, batch, dim, L)
    p = _cuda_rtc.make_params(
        FwdParams, x=_ptr(x), w=_ptr(w), bias=_ptr(bias), h0=_ptr(h0), out=_ptr(out),
        batch=batch, dim=dim, L=L, **_strides("x", x), **_strides("out", out),
        w_dtype=_code(w), bias_dtype=_code(bias), h0_dtype=_code(h0), silu=int(silu),
        vec=int(_aligned(spec, x, out)), iters=iters)
    kernel.launch(grid, (spec.layout.threads, 1, 1), spec.smem_bytes(), p, x.device)
    return out


def _backward(kernel, spec, x, w, bias, h0, silu, dout):
    batch, dim, L = x.shape
    W = w.shape[1]
    dout = in_layout(dout.to(x.dtype), x)
    dx = like(x)
    f32 = dict(device=x.device, dtype=torch.float32)
    # dweight and dbias in one zeroed buffer: one fill kernel (and one cast, in backward())
    sums = torch.zeros(dim * (W + (bias is not None)), **f32)   # dw (dim, W), then dbias (dim,)
    dh0 = torch.empty(batch, dim, W - 1, **f32) if h0 is not None else None
    grid, iters = _grid(spec, batch, dim, L)
    p = _cuda_rtc.make_params(
        BwdParams, x=_ptr(x), w=_ptr(w), bias=_ptr(bias), h0=_ptr(h0), dout=_ptr(dout),
        dx=_ptr(dx), dw=_ptr(sums[:dim * W]), dbias=_ptr(sums[dim * W:] if bias is not None else None), dh0=_ptr(dh0),
        batch=batch, dim=dim, L=L, **_strides("x", x), **_strides("dout", dout), **_strides("dx", dx),
        w_dtype=_code(w), bias_dtype=_code(bias), h0_dtype=_code(h0), silu=int(silu),
        vec=int(_aligned(spec, x, dout, dx)), iters=iters)
    kernel.launch(grid, (spec.layout.threads, 1, 1), spec.smem_bytes(), p, x.device)
    return dx, sums, dh0


class _CausalConv1dCuda(torch.autograd.Function):
    """x (batch, dim, L) with unit time or channel stride, taken as is; the output and dx
    come in x's layout."""

    @staticmethod
    def forward(ctx, x, weight, bias, initial_states, silu):
        need_grad = ctx.needs_input_grad is not None and any(ctx.needs_input_grad[:4])
        w, b, h0 = _small(weight), _small(bias), _small(initial_states)
        fwd, bwd = _specs(x, w.shape[1], need_grad)
        kf, _ = _kernels(x.device, [fwd, None])
        out = _forward(kf, fwd, x, w, b, h0, silu)
        if need_grad:
            ctx.save_for_backward(x, w, b, h0)
            ctx.silu, ctx.spec = silu, bwd
            ctx.dtypes = tuple(None if t is None else t.dtype for t in (weight, bias, initial_states))
        return out

    @staticmethod
    def backward(ctx, dout):
        x, w, b, h0 = ctx.saved_tensors
        (kb,) = _kernels(x.device, [ctx.spec])
        dx, sums, dh0 = _backward(kb, ctx.spec, x, w, b, h0, ctx.silu, dout)
        wd, bd, hd = ctx.dtypes
        dim, W = w.shape
        if b is not None and bd == wd:          # one cast for both (none for float32)
            sums = sums.to(wd)
        dw = sums[:dim * W].view(dim, W).to(wd)
        db = sums[dim * W:].to(bd) if b is not None else None
        return dx, dw, db, None if dh0 is None else dh0.to(hd), None


def causal_conv1d_cuda(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """CUDA causal conv1d; same arguments and results as :func:`~mimetic.ops.causal_conv1d.
    reference.causal_conv1d_ref`: x (batch, dim, L), weight (dim, W), bias (dim,),
    initial_states (batch, dim, W-1); out (batch, dim, L) in x's dtype (and the final
    states (batch, dim, W-1)). Differentiable in x, weight, bias and initial_states. Falls
    back to the Triton conv, with one warning, where the kernels cannot run (see the
    module docstring)."""
    _check_device(x)
    kwargs = dict(bias=bias, activation=activation, initial_states=initial_states,
                  return_final_states=return_final_states)
    if x.dtype == torch.float64 or x.numel() == 0:
        # float64 keeps float64 accuracy on the shifted conv; empty inputs have nothing to launch
        return causal_conv1d_torch(x, weight, **kwargs)
    x = _unit_layout(x)
    W = weight.shape[1]
    need_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, initial_states))
    try:  # compile (or fall back) before autograd sees the call
        if W > MAX_WIDTH:
            raise _Unavailable(f"width {W} > {MAX_WIDTH}")
        fwd, bwd = _specs(x, W, need_grad)
        _grid(fwd, *x.shape)
        _kernels(x.device, [fwd, bwd])
    except _Unavailable as e:
        _warn_fallback(str(e))
        return _fallback(x, weight, **kwargs)
    out = _CausalConv1dCuda.apply(x, weight, bias, initial_states, activation in ("silu", "swish"))
    if return_final_states:
        return out, final_states(x, initial_states, W)
    return out
