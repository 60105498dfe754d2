"""CPU emulation of the CUDA selective scan kernels, for the tests (no GPU needed).

The kernel sources (``mimetic/ops/selective_scan/cuda_src``) compile with g++ as C++ with
``-DMIMETIC_CPU_EMULATION`` after ``simt.h`` (threads as fibers, barriers, shuffles,
atomics; runtime in ``simt.cpp``). Every shipped specialization of a direction
(``cuda.shipped_specs``) goes into one shared library, cached by the hash of everything
that goes into it. :class:`Emulation` stands in for the GPU under ``cuda.py``'s own
launchers: its :meth:`Emulation.kernels` replaces ``cuda._kernels`` and returns kernels
whose ``launch`` takes the same grid, block, shared-memory size and parameter struct as
``_cuda_rtc.Kernel.launch``, and :meth:`Emulation.ptr` replaces ``cuda._ptr`` to learn
the tensor behind every pointer of the struct (to check each access and to fill the
outputs with NaN first). Why under tests/ and not the package: it is a test instrument,
built with the tests' compiler, and nothing at run time uses it.

What a launch checks (a failure raises :class:`EmulationError` with the thread, block,
and source line where it can):

* every memory access of the kernel (compiled with ``-fsanitize=kernel-address``) lands
  in the thread's stack, the block's dynamic shared memory (exactly the launch's bytes),
  the parameter struct, or a registered tensor's span; writes only into outputs;
* UBSan's checks: fixed-size array bounds, alignment (16-byte vector accesses),
  signed overflow, shifts;
* ``__syncthreads`` reached by every thread at the same place; each warp operation
  reached by all 32 lanes at the same place, kind and width; no deadlock;
* shared memory starts as NaN and outputs (except the accumulated dB / dC) are NaN
  before the launch, so values read before they are written, and outputs left
  unwritten, show.

Races between threads show as results that change with the thread order (:func:`run`'s
``order``); the tests compare the orders bit for bit. ``probes.cu`` holds small kernels
that check the emulation itself (shuffle semantics, and that each check fires).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import torch

from mimetic.ops.selective_scan import cuda

HERE = Path(__file__).resolve().parent
GXX = shutil.which("g++")

#: Dynamic shared memory the emulation offers a block: an H100 / H200's opt-in maximum.
SMEM_CAPACITY = 232448

#: Pointer fields of the parameter structs the kernels write; the others are read-only.
#: dB and dC are accumulated into (the launcher zeroes them), the rest must be written.
OUTPUTS = {"fwd": {"out", "ckpt", "last"},
           "bwd": {"du", "ddelta", "dz", "dA", "dB", "dC", "dD", "dbias", "dh0"}}
ACCUMULATED = {"dB", "dC"}

SANITIZE = ["-fsanitize=kernel-address", "--param", "asan-instrumentation-with-call-threshold=0",
            "--param", "asan-stack=0", "--param", "asan-globals=0",
            "-fsanitize=alignment,bounds,shift,signed-integer-overflow,integer-divide-by-zero,"
            "vla-bound,return,unreachable,bool,enum,pointer-overflow"]
COMMON_FLAGS = ["-std=gnu++17", "-fPIC", "-DMIMETIC_CPU_EMULATION", f"-I{HERE}"]
KERNEL_FLAGS = ["-O1", "-g1", *SANITIZE]
RUNTIME_FLAGS = ["-O2", "-g1"]


class EmulationError(AssertionError):
    """A launch broke one of the emulation's checks (the message says which, where)."""


class _Range(ctypes.Structure):
    _fields_ = [("lo", ctypes.c_uint64), ("hi", ctypes.c_uint64), ("writable", ctypes.c_int64),
                ("name", ctypes.c_char_p)]


class _Launch(ctypes.Structure):
    _fields_ = [("params", ctypes.c_void_p), ("params_bytes", ctypes.c_uint64),
                ("grid", ctypes.c_uint32 * 3), ("block", ctypes.c_uint32 * 3), ("smem_bytes", ctypes.c_uint64),
                ("ranges", ctypes.POINTER(_Range)), ("n_ranges", ctypes.c_int64), ("order", ctypes.c_int64),
                ("seed", ctypes.c_uint64), ("error", ctypes.c_char_p), ("error_bytes", ctypes.c_uint64)]


# ----------------------------------------------------------------------------- build


def kernel_source(direction: str, specs: list[cuda.Spec]) -> str:
    """The translation unit of one direction: simt.h, the kernel source as NVRTC sees it
    (ops/cuda_src/common.cuh, the scan's common.cuh, then scan_<direction>.cu, by #include
    so that reports name their lines) and one exported ``int <spec.name>(const EmuLaunch*)`` per spec."""
    params = "SsFwdParams" if direction == "fwd" else "SsBwdParams"
    lines = ['#include "simt.h"',
             f'#include "{cuda.SHARED_COMMON}"',
             f'#include "{cuda.SOURCE_DIR / "common.cuh"}"',
             f'#include "{cuda.SOURCE_DIR / f"scan_{direction}.cu"}"',
             f"alignas(16) ss_f4 smem4[{SMEM_CAPACITY // 16}];   // extern __shared__ in the kernel",
             'extern "C" int emu_run(const void*, void (*)(const void*), void*, unsigned long long);']
    for i, spec in enumerate(specs):
        args = ", ".join(map(str, spec.template_args()))
        lines += [f"static void entry_{i}(const void* p) {{ ss_{direction}_kernel<{args}>"
                  f"(*static_cast<const {params}*>(p)); }}",
                  f'extern "C" int {spec.name}(const void* l) {{ return emu_run(l, entry_{i}, smem4, sizeof smem4); }}']
    return "\n".join(lines) + "\n"


def _compiler_version() -> str:
    return subprocess.run([GXX, "--version"], capture_output=True, text=True).stdout


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:20]


def _run(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc: subprocess.Popen, what: str) -> None:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"g++ failed on {what}:\n{out[-6000:]}")


def _runtime(cache: Path, version: str) -> tuple[Path, str]:
    """(simt.o, the text it depends on), compiled where ``cache`` lacks it."""
    runtime_src = (HERE / "simt.cpp").read_text() + (HERE / "simt.h").read_text()
    runtime = cache / f"simt-{_digest(runtime_src, version, *COMMON_FLAGS, *RUNTIME_FLAGS)}.o"
    if not runtime.exists():
        tmp = runtime.with_suffix(f".{os.getpid()}.tmp.o")
        _wait(_run([GXX, *COMMON_FLAGS, *RUNTIME_FLAGS, "-c", str(HERE / "simt.cpp"), "-o", str(tmp)]), "simt.cpp")
        os.replace(tmp, runtime)
    return runtime, runtime_src


def _unit(name: str) -> tuple[str, str]:
    """(translation unit, the text it includes) of a library name."""
    if name == "probes":
        return f'#include "{HERE / "probes.cu"}"\n', (HERE / "probes.cu").read_text()
    if name.startswith("conv_"):
        from . import conv

        return conv.unit(name[5:])
    return kernel_source(name, cuda.shipped_specs(name)), cuda.source(name)


def build_folder(request, tmp_path_factory) -> Path:
    """Where a test session keeps the built libraries: pytest's cache (kept between runs, so
    unchanged kernels are not rebuilt), or a fresh temporary folder without one."""
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("cuda_emu")) if cache is not None else tmp_path_factory.mktemp("cuda_emu")


def build(cache: Path, names: tuple[str, ...] = ("fwd", "bwd")) -> dict[str, Path]:
    """{name: path of its library}, built where ``cache`` lacks them (in parallel). Names:
    "fwd" / "bwd", the emulated kernels of a direction (every shipped spec), "probes"
    (probes.cu: kernels that check the emulation itself), "conv_fwd" / "conv_bwd" (the
    causal conv1d's kernels, ``conv.py``)."""
    cache.mkdir(parents=True, exist_ok=True)
    version = _compiler_version()
    runtime, runtime_src = _runtime(cache, version)
    libs, jobs = {}, []
    for name in names:
        tu, included = _unit(name)
        key = _digest(tu, included, runtime_src, version, *COMMON_FLAGS, *KERNEL_FLAGS)
        lib = cache / f"{name}-{key}.so"
        libs[name] = lib
        if lib.exists():
            continue
        src = cache / f"{name}-{key}.{os.getpid()}.cpp"     # per process: parallel test runs share the cache
        src.write_text(tu)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp.so")
        cmd = [GXX, *COMMON_FLAGS, *KERNEL_FLAGS, "-shared", "-Wl,-z,defs", str(src), str(runtime), "-o", str(tmp)]
        jobs.append((_run(cmd), tmp, lib, name))
    for proc, tmp, lib, name in jobs:
        _wait(proc, f"the {name} library")
        os.replace(tmp, lib)
    return libs


# ----------------------------------------------------------------------------- launches


def _span(t: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) byte addresses a strided tensor covers."""
    extent = sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1
    return t.data_ptr(), t.data_ptr() + extent * t.element_size()


def _source_line(report: str) -> str:
    """addr2line's function and line for the report's ``[code lib+0x..]``, when it can."""
    found = re.search(r"\[code (\S+)\+(0x[0-9a-f]+)\]", report)
    tool = shutil.which("addr2line")
    if not found or not tool:
        return ""
    out = subprocess.run([tool, "-e", found.group(1), "-f", "-C", "-i", found.group(2)], capture_output=True,
                         text=True).stdout
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    # (function, file:line) pairs, innermost inlined frame first
    return "".join(f"\n  at {loc} ({func})" for func, loc in zip(lines[::2], lines[1::2]))


class EmulatedKernel:
    """One specialization in an emulated library, launched like ``_cuda_rtc.Kernel``."""

    def __init__(self, emulation, spec, outputs: set[str] | None = None, accumulated: set[str] = ACCUMULATED):
        """``emulation``: has ``libs`` (by ``spec.direction``), ``seen``, ``order``, ``seed``;
        ``outputs`` / ``accumulated``: the pointer fields written / added into (default:
        the scan's, :data:`OUTPUTS`)."""
        self.emulation, self.spec = emulation, spec
        self.fn = entry(emulation.libs[spec.direction], spec.name)
        self.outputs = OUTPUTS[spec.direction] if outputs is None else outputs
        self.accumulated = accumulated
        self.last_params: dict[str, int] | None = None    # the fields of the last launch

    def launch(self, grid, block, smem, params, device) -> None:
        em = self.emulation
        outputs = self.outputs
        by_ptr = {t.data_ptr(): t for t in em.seen if t.numel()}
        tensors = []
        for field, kind in params._fields_:
            value = getattr(params, field)
            if kind is not ctypes.c_uint64 or value == 0:
                continue
            tensor = by_ptr.get(value)
            if tensor is None:
                raise EmulationError(f"pointer field {field} of {self.spec.name} is not a tensor the launcher passed")
            if field in outputs and field not in self.accumulated:
                tensor.fill_(float("nan"))
            tensors.append((field, tensor, field in outputs))
        em.seen.clear()
        self.last_params = {name: getattr(params, name) for name, _ in params._fields_}
        run(self.fn, grid, block, smem, params, tensors, em.order, em.seed, self.spec.name)


def entry(lib: ctypes.CDLL, name: str):
    """The exported ``int name(const EmuLaunch*)`` of an emulated library."""
    fn = getattr(lib, name)
    fn.argtypes = [ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def run(fn, grid, block, smem: int, params: ctypes.Structure, tensors, order: int = 0, seed: int = 0,
        what: str = "kernel") -> None:
    """One emulated launch of ``fn`` (:func:`entry`) with ``params`` (the kernel's by-value
    struct); ``tensors``: (name, tensor, writable) for every tensor the kernel may touch.
    ``order``: 0 / 1 / 2 the first runnable thread of ascending ids / descending ids / a
    random permutation (drawn anew at each __syncthreads) runs, so a warp runs ahead as far
    as it can; 3 round robin. Raises :class:`EmulationError` on any failed check."""
    names = [name.encode() for name, _, _ in tensors]
    ranges = [_Range(*_span(t), int(writable), nm) for (_, t, writable), nm in zip(tensors, names)]
    arr = (_Range * max(len(ranges), 1))(*ranges)
    err = ctypes.create_string_buffer(4096)
    launch = _Launch(ctypes.addressof(params), ctypes.sizeof(params), (ctypes.c_uint32 * 3)(*grid),
                     (ctypes.c_uint32 * 3)(*block), smem, arr, len(ranges), order, seed,
                     ctypes.cast(err, ctypes.c_char_p), len(err))
    if fn(ctypes.addressof(launch)):
        report = err.value.decode(errors="replace")
        raise EmulationError(f"{what}: {report}{_source_line(report)}")


class Emulation:
    """The emulated GPU behind ``cuda.py``: install with :meth:`install`; ``order`` /
    ``seed`` pick the thread order of the launches that follow."""

    def __init__(self, libs: dict[str, Path]):
        self.libs = {d: ctypes.CDLL(str(libs[d])) for d in ("fwd", "bwd")}
        self.seen: list[torch.Tensor] = []
        self.order, self.seed = 0, 0
        self._kernels: dict[cuda.Spec, EmulatedKernel] = {}

    def reset(self) -> None:
        """Ascending thread order, no launch recorded."""
        self.order, self.seed = 0, 0
        self.seen.clear()
        for k in self._kernels.values():
            k.last_params = None

    def ptr(self, t: torch.Tensor | None) -> int:
        """``cuda._ptr``, remembering the tensor (the next launch registers it)."""
        if t is None:
            return 0
        self.seen.append(t)
        return t.data_ptr()

    def kernel(self, spec: cuda.Spec) -> EmulatedKernel:
        if spec not in self._kernels:
            self._kernels[spec] = EmulatedKernel(self, spec)
        return self._kernels[spec]

    def kernels(self, device, batch, kd, bcd, N, config, need_grad):
        """``cuda._kernels`` on the emulation: the specs the real one would pick (and its
        size checks), the emulated kernels instead of compiled ones."""
        if N > cuda.MAX_STATE:
            raise cuda._Unavailable(f"d_state {N} > {cuda.MAX_STATE}")
        fwd, bwd = cuda._specs(kd, bcd, N, config, need_grad)
        for spec in (fwd, bwd):
            if spec is not None and spec.smem_bytes(N) > SMEM_CAPACITY:
                raise cuda._Unavailable(f"{spec.name} needs {spec.smem_bytes(N)} bytes of shared memory")
        return (fwd, self.kernel(fwd)), (bwd, None if bwd is None else self.kernel(bwd))

    def install(self, monkeypatch) -> None:
        """Route ``cuda.py``'s launches on CPU tensors here (pytest's monkeypatch undoes it)."""
        monkeypatch.setattr(cuda, "_kernels", self.kernels)
        monkeypatch.setattr(cuda, "_ptr", self.ptr)
        monkeypatch.setattr(cuda, "_check_device", lambda u: None)

