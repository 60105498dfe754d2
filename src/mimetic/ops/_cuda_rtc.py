"""CUDA C++ kernels compiled at run time: compile, cache on disk, load, launch on torch's stream.

Why not ``torch.cuda._compile_kernel``: it is private, returns a loaded module rather than
the cubin (so nothing can be cached on disk), passes scalars only as int32 or double
(our kernels take one parameter struct with 64-bit strides), and adds torch's own nvcc
flags. So this module calls NVRTC and the CUDA driver itself through ``ctypes``:

* **Compilers** (:func:`find_compiler`): NVRTC, the ``libnvrtc`` that torch's CUDA wheels
  depend on (``nvidia-cuda-nvrtc``, found under ``nvidia/cu<major>/lib`` or
  ``nvidia/cuda_nvrtc/lib`` on ``sys.path``, or on the loader's path), or else ``nvcc``
  from ``PATH`` / ``CUDA_HOME``. Both compile to a cubin for one ``sm_XY`` and need no
  GPU, so CI compile-checks the kernels on a CPU machine (tests/ops/test_cuda_selective_scan.py).
  ``MIMETIC_CUDA_COMPILER=nvrtc|nvcc`` picks one; ``MIMETIC_NVRTC=/path/libnvrtc.so`` names
  the library.
* **Cache** (:func:`compile_cached`): one cubin (and the ptxas report) per key = sha256 of
  (source, options, arch, compiler and its version), under :func:`cache_dir`:
  ``$MIMETIC_CUDA_CACHE``, else ``$XDG_CACHE_HOME/mimetic/cuda``, else
  ``~/.cache/mimetic/cuda``. Written atomically; an unwritable folder only loses the cache.
* **Launch** (:class:`Kernel`): ``cuModuleLoadData`` once per device (in the device's
  primary context, the one torch uses), ``cuLaunchKernel`` on
  ``torch.cuda.current_stream()`` with the kernel's single parameter struct (a
  ``ctypes.Structure``), so launches order with torch's work and CUDA graphs capture them.

Errors: :class:`CudaRtcUnavailable` when no compiler or driver can be used (callers fall
back to another backend), :class:`CudaCompileError` for a failed compile (its log).
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["CudaCompileError", "CudaRtcUnavailable", "Compiled", "Compiler", "Kernel", "cache_dir",
           "compile_cached", "find_compiler", "ptxas_resources"]


#: The header every op's kernel source starts with (16-bit types, conversions, vector loads).
SHARED_COMMON = Path(__file__).with_name("cuda_src") / "common.cuh"


class CudaRtcUnavailable(RuntimeError):
    """No usable compiler or CUDA driver: the caller should fall back to another backend."""


class CudaCompileError(RuntimeError):
    """A kernel failed to compile; the message holds the compiler's log."""


# ----------------------------------------------------------------------------- compilers


def _nvrtc_candidates() -> list[str]:
    """Paths or sonames to try for libnvrtc, most specific first."""
    names = []
    if os.environ.get("MIMETIC_NVRTC"):
        names.append(os.environ["MIMETIC_NVRTC"])
    major = (torch.version.cuda or "").split(".")[0]
    for entry in sys.path:
        for sub in ([f"cu{major}"] if major else []) + ["cuda_nvrtc"]:
            names += sorted(glob.glob(os.path.join(entry, "nvidia", sub, "lib", "libnvrtc.so.*[0-9]")))
    if major:
        names.append(f"libnvrtc.so.{major}")
    names.append("libnvrtc.so")
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    names += sorted(glob.glob(os.path.join(cuda_home, "lib64", "libnvrtc.so*")))
    # libnvrtc-builtins is a separate library that libnvrtc loads itself
    return [n for n in names if "builtins" not in os.path.basename(n)]


@dataclass(frozen=True)
class Compiler:
    """A CUDA C++ compiler: ``kind`` "nvrtc" (``path`` the library) or "nvcc" (the program)."""

    kind: str
    path: str
    version: str

    def compile(self, source: str, name: str, options: list[str], arch: str) -> tuple[bytes, str]:
        """(cubin, log) of ``source`` for ``arch`` ("sm_90"); ``options`` are -D/-std
        flags common to both compilers; ptxas' resource report is asked for (in the log)."""
        if self.kind == "nvrtc":
            return _nvrtc_compile(self.path, source, name, options, arch, _nvrtc_flags(self.version))
        return _nvcc_compile(self.path, source, name, options, arch)


_NVRTC_LOCK = threading.Lock()


def _load_nvrtc(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def _nvrtc_flags(version: str) -> list[str]:
    """NVRTC's own flags for a compile with ptxas' report: from 12.9 on, NVRTC keeps a cache of
    its own, and a compile served from it prints no report (an empty log, read as "no
    resources" by the spill checks); this module's disk cache is the cache, so NVRTC's is off."""
    major, minor = (int(v) for v in (version.split(".") + ["0"])[:2])
    return ["--ptxas-options=-v"] + (["--no-cache"] if (major, minor) >= (12, 9) else [])


def _nvrtc_compile(path, source, name, options, arch, flags):
    try:
        return _nvrtc_compile_once(path, source, name, [*flags, *options], arch)
    except CudaCompileError as e:
        if not any(f.split("=")[0] in str(e) for f in flags):
            raise
    return _nvrtc_compile_once(path, source, name, list(options), arch)   # an NVRTC without the option


def _nvrtc_compile_once(path, source, name, options, arch):
    lib = _load_nvrtc(path)
    prog = ctypes.c_void_p()

    def check(code, what):
        if code != 0:
            raise CudaCompileError(f"NVRTC {what} failed: {lib.nvrtcGetErrorString(code).decode()}")

    check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 0, None, None),
          "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={arch}", *options]
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        with _NVRTC_LOCK:
            res = lib.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        if res != 0:
            raise CudaCompileError(f"NVRTC could not compile {name} for {arch}:\n{log}")
        check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin.raw, log
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _nvcc_compile(path, source, name, options, arch):
    with tempfile.TemporaryDirectory(prefix="mimetic-nvcc-") as tmp:
        src, out = os.path.join(tmp, f"{name}.cu"), os.path.join(tmp, f"{name}.cubin")
        with open(src, "w") as f:
            f.write(source)
        cmd = [path, "-cubin", f"-arch={arch}", "-O3", "-Xptxas", "-v", *options, "-o", out, src]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise CudaCompileError(f"nvcc could not compile {name} for {arch}:\n{log}")
        with open(out, "rb") as f:
            return f.read(), log


def _nvrtc_compiler() -> Compiler | None:
    for cand in _nvrtc_candidates():
        try:
            lib = _load_nvrtc(cand)
            major, minor = ctypes.c_int(), ctypes.c_int()
            if lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)) != 0:
                continue
            lib.nvrtcGetCUBIN  # noqa: B018 -- CUDA >= 11.1: cubins, not only PTX
        except (OSError, AttributeError):
            continue
        return Compiler("nvrtc", cand, f"{major.value}.{minor.value}")
    return None


def _nvcc_compiler() -> Compiler | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    path = shutil.which("nvcc") or shutil.which(os.path.join(cuda_home, "bin", "nvcc"))
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release ([\d.]+), V([\d.]+)", out)
    return Compiler("nvcc", path, found.group(2) if found else out.strip().splitlines()[-1])


_COMPILERS: dict[str, Compiler | None] = {}


def find_compiler(kind: str | None = None) -> Compiler | None:
    """The compiler to use: ``kind`` ("nvrtc" / "nvcc"), else ``$MIMETIC_CUDA_COMPILER``,
    else NVRTC when its library loads, else nvcc; None when there is none. Cached."""
    kind = kind or os.environ.get("MIMETIC_CUDA_COMPILER") or None
    if kind not in (None, "nvrtc", "nvcc"):
        raise ValueError(f"MIMETIC_CUDA_COMPILER must be 'nvrtc' or 'nvcc', got {kind!r}")
    key = kind or "any"
    if key not in _COMPILERS:
        if kind == "nvcc":
            _COMPILERS[key] = _nvcc_compiler()
        elif kind == "nvrtc":
            _COMPILERS[key] = _nvrtc_compiler()
        else:
            _COMPILERS[key] = _nvrtc_compiler() or _nvcc_compiler()
    return _COMPILERS[key]


# ----------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$MIMETIC_CUDA_CACHE``, else
    ``$XDG_CACHE_HOME/mimetic/cuda``, else ``~/.cache/mimetic/cuda``."""
    if os.environ.get("MIMETIC_CUDA_CACHE"):
        return Path(os.environ["MIMETIC_CUDA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mimetic" / "cuda"


def cache_key(source: str, options: list[str], arch: str, compiler: Compiler) -> str:
    """sha256 of everything that changes the cubin."""
    blob = json.dumps([source, list(options), arch, compiler.kind, compiler.version])
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Compiled:
    """A compiled kernel: its cubin, the compiler log (ptxas' report) and cache key."""

    name: str
    key: str
    cubin: bytes
    log: str
    from_cache: bool


_MEMO: dict[str, Compiled] = {}
_MEMO_LOCK = threading.Lock()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def compile_cached(source: str, name: str, options: list[str], arch: str,
                   compiler: Compiler | None = None) -> Compiled:
    """The cubin of ``source`` for ``arch``: from this process' memo, else the disk cache
    (:func:`cache_dir`), else compiled now and stored in both. ``name`` names the files
    (``name-<key>.cubin`` / ``.log``). Raises :class:`CudaRtcUnavailable` without a
    compiler and :class:`CudaCompileError` when the compile fails (not cached)."""
    compiler = compiler or find_compiler()
    if compiler is None:
        raise CudaRtcUnavailable("no CUDA compiler found (neither torch's NVRTC library nor nvcc)")
    key = cache_key(source, options, arch, compiler)
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    folder = cache_dir()
    stem = f"{name}-{key[:24]}"
    cubin_path, log_path = folder / f"{stem}.cubin", folder / f"{stem}.log"
    compiled = None
    with contextlib.suppress(OSError):
        compiled = Compiled(name, key, cubin_path.read_bytes(), log_path.read_text(), True)
    if compiled is None:
        cubin, log = compiler.compile(source, name, options, arch)
        compiled = Compiled(name, key, cubin, log, False)
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(log_path, log.encode())        # the log first: the cubin marks a complete entry
            _write_atomic(cubin_path, cubin)
    with _MEMO_LOCK:
        _MEMO.setdefault(key, compiled)
    return compiled


_PTXAS = {
    "registers": r"Used (\d+) registers",
    "stack_bytes": r"(\d+) bytes stack frame",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
}


def ptxas_resources(log: str) -> dict[str, int]:
    """Registers, stack frame and spill bytes of the (one) kernel in a ptxas -v log; keys
    missing when the log lacks them."""
    found = {}
    for key, pattern in _PTXAS.items():
        m = re.search(pattern, log)
        if m:
            found[key] = int(m.group(1))
    return found


# ----------------------------------------------------------------------------- driver


_DRIVER = None
_DRIVER_LOCK = threading.Lock()


def _driver() -> ctypes.CDLL:
    global _DRIVER
    with _DRIVER_LOCK:
        if _DRIVER is None:
            try:
                lib = ctypes.CDLL("libcuda.so.1")
            except OSError as e:
                raise CudaRtcUnavailable(f"the CUDA driver library could not be loaded ({e})") from e
            lib.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [
                ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            _DRIVER = lib
        return _DRIVER


def _check(code: int, what: str) -> None:
    if code != 0:
        name = ctypes.c_char_p()
        _driver().cuGetErrorName(code, ctypes.byref(name))
        raise RuntimeError(f"{what} failed: {name.value.decode() if name.value else code}")


_PRIMARY: dict[int, ctypes.c_void_p] = {}


def _make_current(index: int) -> None:
    """Make device ``index``'s primary context (torch's) current on this thread; torch's
    autograd threads usually have it already."""
    lib = _driver()
    if index not in _PRIMARY:
        torch.cuda.init()
        dev, ctx = ctypes.c_int(), ctypes.c_void_p()
        _check(lib.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
        _check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        _PRIMARY[index] = ctx
    cur = ctypes.c_void_p()
    _check(lib.cuCtxGetCurrent(ctypes.byref(cur)), "cuCtxGetCurrent")
    if cur.value != _PRIMARY[index].value:
        _check(lib.cuCtxSetCurrent(_PRIMARY[index]), "cuCtxSetCurrent")


_CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8


class Kernel:
    """One ``extern "C"`` kernel of a compiled cubin, loaded lazily on each device."""

    def __init__(self, compiled: Compiled, entry: str):
        self.compiled, self.entry = compiled, entry
        self._functions: dict[int, tuple[ctypes.c_void_p, ctypes.c_void_p, list]] = {}
        self._lock = threading.Lock()

    def _function(self, index: int, smem: int):
        with self._lock:
            if index not in self._functions:
                lib = _driver()
                module, func = ctypes.c_void_p(), ctypes.c_void_p()
                _check(lib.cuModuleLoadData(ctypes.byref(module), self.compiled.cubin), "cuModuleLoadData")
                _check(lib.cuModuleGetFunction(ctypes.byref(func), module, self.entry.encode()),
                       "cuModuleGetFunction")
                self._functions[index] = (module, func, [0])
            module, func, smem_set = self._functions[index]
            if smem > 48 * 1024 and smem > smem_set[0]:
                _check(_driver().cuFuncSetAttribute(func, _CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem),
                       "cuFuncSetAttribute(max dynamic shared memory)")
                smem_set[0] = smem
            return func

    def launch(self, grid: tuple[int, int, int], block: tuple[int, int, int], smem: int,
               params: ctypes.Structure, device: torch.device) -> None:
        """Launch on ``device``'s current torch stream with ``params`` as the kernel's one
        by-value argument."""
        index = device.index if device.index is not None else torch.cuda.current_device()
        _make_current(index)
        func = self._function(index, smem)
        stream = torch.cuda.current_stream(index).cuda_stream
        args = (ctypes.c_void_p * 1)(ctypes.addressof(params))
        _check(_driver().cuLaunchKernel(func, *grid, *block, smem, ctypes.c_void_p(stream),
                                        ctypes.cast(args, ctypes.c_void_p), None),
               f"cuLaunchKernel({self.entry})")


# ----------------------------------------------------------------------------- helpers of the ops' launchers


class KernelUnavailable(Exception):
    """This call cannot run on an op's run-time compiled kernels (size, device, compiler);
    the message says why, and the op falls back to its Triton kernels."""


_LIBRARY_DIRS = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,   # mimetic
                 os.path.dirname(os.path.abspath(torch.__file__)) + os.sep)


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the innermost caller outside mimetic and torch (a layer's op
    is reached through both), seen from :func:`warn_fallback`'s ``warnings.warn``."""
    level, frame = 2, sys._getframe(2)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def warn_fallback(warned: set[str], kernels: str, instead: str, reason: str) -> None:
    """One RuntimeWarning per ``reason`` (``warned`` remembers them, one set per op) that
    ``kernels`` cannot run here and ``instead`` runs, pointed at the user's line that led
    to the call."""
    if reason not in warned:
        warned.add(reason)
        warnings.warn(f"mimetic: the {kernels} cannot run here ({reason}); using the {instead} instead "
                      f"(this warning is shown once)", RuntimeWarning, stacklevel=_user_stacklevel())


def param_struct(source: str, name: str) -> type[ctypes.Structure]:
    """The parameter struct ``name`` of a kernel source as a ctypes Structure, read from
    the source itself: every field must be ``u64`` or ``i64`` (so the layouts agree with
    no padding rules); ``//`` comments are skipped."""
    found = re.search(r"struct " + name + r" \{(.*?)\};", source, re.S)
    if found is None:
        raise ValueError(f"no struct {name} in the kernel source")
    body = re.sub(r"//[^\n]*", "", found.group(1))
    fields = []
    for decl in body.split(";"):
        decl = decl.strip()
        if not decl:
            continue
        kind, names = decl.split(None, 1)
        ctype = {"u64": ctypes.c_uint64, "i64": ctypes.c_int64}[kind]
        fields += [(n.strip(), ctype) for n in names.split(",")]
    return type(name, (ctypes.Structure,), {"_fields_": fields})


def make_params(cls: type[ctypes.Structure], **values) -> ctypes.Structure:
    """cls with every field given (a field left out would silently be 0 in the kernel)."""
    names = [name for name, _ in cls._fields_]
    if set(values) != set(names):
        raise TypeError(f"{cls.__name__}: missing {sorted(set(names) - set(values))}, "
                        f"unknown {sorted(set(values) - set(names))}")
    return cls(**values)


def device_arch(device: torch.device) -> str:
    """``sm_XY`` of a CUDA device."""
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


_PROBLEMS: dict[tuple, str | None] = {}


def environment_problem(device: torch.device, min_capability: tuple[int, int]) -> str | None:
    """Why kernels needing ``min_capability`` cannot run on ``device`` at all (too old a
    GPU, no compiler, no driver), or None; cached per (device, capability)."""
    key = (str(device), tuple(min_capability))
    if key not in _PROBLEMS:
        problem = None
        cap = torch.cuda.get_device_capability(device)
        if cap < tuple(min_capability):
            problem = (f"compute capability {cap[0]}.{cap[1]} is below "
                       f"{min_capability[0]}.{min_capability[1]}")
        elif find_compiler() is None:
            problem = "no CUDA compiler: neither torch's NVRTC library (nvidia-cuda-nvrtc) nor nvcc was found"
        else:
            try:
                _driver()
            except CudaRtcUnavailable as e:
                problem = str(e)
        _PROBLEMS[key] = problem
    return _PROBLEMS[key]


def resources_by_template_args(log: str) -> dict[tuple[int, ...], dict[str, int]]:
    """ptxas' registers / stack / spills of each kernel in the -v log of a translation
    unit of explicit template instantiations, keyed by the kernel's integer template
    arguments (read from the mangled name)."""
    found = {}
    for part in log.split("Compiling entry function '")[1:]:
        mangled = part.split("'", 1)[0]
        found[tuple(int(a) for a in re.findall(r"Li(\d+)E", mangled))] = ptxas_resources(part)
    return found
