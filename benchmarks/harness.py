"""What every benchmark script shares: timers, the error measure, the environment record
and the result files. Scripts in this folder import it as ``import harness`` (a script's
own folder is first on ``sys.path``).

Timers (all take a no-argument callable; ``grad_to_none``: tensors whose ``.grad`` is
reset before each timed call, so that backward passes do not accumulate):

* :func:`cuda_ms`: wall time per call on CUDA, ``triton.testing.do_bench``'s median after
  its warm-up (25 ms warm-up, 100 ms of timed calls);
* :func:`cpu_ms`: the CPU stand-in, median of ``time.perf_counter`` timings after
  ``warmup`` untimed calls; :func:`wall_ms` picks one of the two by device;
* :func:`graph_us`: microseconds per call inside one CUDA graph (what a decode loop that
  replays graphs pays, launches excluded);
* :func:`kernel_ms`: GPU kernel time per call, the device time of every kernel that
  ``torch.profiler`` saw, summed (:func:`device_time_totals`; memcpy/memset added on
  request): host work (Python, launches) left out;
* :func:`median_s`: seconds of whole calls between device synchronisations, for long
  calls (a training step, a generate call).

Results: :func:`env_info` (device, versions, date, commit), :func:`print_record` (one
JSON line per measured case on stdout, so a run that is cut short keeps what it printed),
:func:`write_results` (``NAME.json`` with every number and ``NAME.md``, the short table)
and :func:`markdown_table`.
"""
from __future__ import annotations

import datetime
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------- timers


def _reset_grads(tensors) -> None:
    for t in tensors or ():
        t.grad = None


def cuda_ms(fn: Callable[[], Any], grad_to_none=None, warmup: int = 25, rep: int = 100) -> float:
    """Milliseconds per call of fn on CUDA: ``do_bench``'s median over ``rep`` ms of calls
    after ``warmup`` ms of untimed ones (it flushes the L2 cache between calls)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode="median")


def cpu_ms(fn: Callable[[], Any], grad_to_none=None, reps: int = 3, warmup: int = 1) -> float:
    """Milliseconds per call of fn on the CPU: median of ``reps`` ``perf_counter`` timings
    after ``warmup`` untimed calls."""
    times = []
    for i in range(warmup + reps):
        _reset_grads(grad_to_none)
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def wall_ms(fn: Callable[[], Any], device: str | torch.device, grad_to_none=None) -> float:
    """:func:`cuda_ms` for a CUDA device, else :func:`cpu_ms`."""
    timer = cuda_ms if torch.device(device).type == "cuda" else cpu_ms
    return timer(fn, grad_to_none=grad_to_none)


def graph_us(fn: Callable[[], Any], calls: int) -> float:
    """Microseconds per call of fn captured ``calls`` times in one CUDA graph; the replay is
    timed with :func:`cuda_ms`. fn runs 3 times on a side stream first (autotuning and
    lazy allocations stay out of the graph)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return cuda_ms(graph.replay) * 1e3 / calls


def device_time_totals(prof, top: int = 0) -> dict[str, Any]:
    """Self device time (ms) and counts of the CUDA events of a finished ``torch.profiler``
    run: kernels, and memcpy/memset apart; with ``top``, the heaviest kernels by name.
    User annotations' GPU spans (e.g. ``Optimizer.step#AdamW.step``) cover kernels already
    counted: left out."""
    from torch.autograd import DeviceType

    kernels, copies, per_name = [0.0, 0], [0.0, 0], []
    for evt in prof.key_averages():
        if evt.device_type != DeviceType.CUDA or getattr(evt, "is_user_annotation", False):
            continue
        us = getattr(evt, "self_device_time_total", None)
        if us is None:
            us = evt.self_cuda_time_total
        bucket = copies if evt.key.startswith(("Memcpy", "Memset")) else kernels
        bucket[0] += us / 1e3
        bucket[1] += evt.count
        if bucket is kernels:
            per_name.append((us / 1e3, evt.count, evt.key))
    rec = {"kernel_ms": kernels[0], "kernels": kernels[1], "memcpy_memset_ms": copies[0], "memcpy_memset": copies[1]}
    if top:
        rec["top"] = [{"kernel": k[:90], "ms": t, "count": n} for t, n, k in sorted(per_name, reverse=True)[:top]]
    return rec


def profile_totals(fn: Callable[[], Any], iters: int = 20, top: int = 0) -> dict[str, Any]:
    """:func:`device_time_totals` of ``iters`` calls of fn under ``torch.profiler`` (after one
    untimed call), summed over the calls (divide by ``iters`` for per-call numbers)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return device_time_totals(prof, top=top)


def kernel_ms(fn: Callable[[], Any], iters: int = 20, copies: bool = False) -> float:
    """GPU kernel milliseconds per call of fn: the device time of the kernels
    ``torch.profiler`` records over ``iters`` calls (after one untimed call), summed
    (:func:`profile_totals`) and divided by ``iters``; with ``copies``, memcpy/memset
    time is added. Unlike :func:`cuda_ms` it leaves out host work (Python, launches),
    which dominates small ops."""
    totals = profile_totals(fn, iters)
    return (totals["kernel_ms"] + (totals["memcpy_memset_ms"] if copies else 0.0)) / iters


def bench_device(smoke: bool) -> torch.device | None:
    """The device a GPU benchmark measures on: CUDA, or the CPU under ``--smoke`` (tiny
    sizes); None, said on stderr, when there is no CUDA device and no ``--smoke``."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not smoke:
        print("no CUDA device: run with --smoke on the CPU", file=sys.stderr)
        return None
    return device


def sync(device: str | torch.device | None = None) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], Any], device: str | torch.device = "cpu") -> tuple[float, Any]:
    """(seconds, output) of one call of fn, between synchronisations of ``device``."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def median_s(fn: Callable[[], Any], repeats: int, device: str | torch.device = "cpu",
             warmup: int = 1) -> tuple[float, Any]:
    """(median seconds over ``repeats`` calls after ``warmup`` untimed ones, last output),
    each call timed by :func:`seconds`."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeats):
        t, out = seconds(fn, device)
        times.append(t)
    return statistics.median(times), out


# ------------------------------------------------------------------- error


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64, on the tensors' device. Unlike the tests'
    ``tests/ops/numerics.py:rel_err`` it does not fail on non-finite values: a benchmark
    records them (the result is then NaN or inf)."""
    if got.shape != ref.shape:
        raise ValueError(f"shape {tuple(got.shape)} != {tuple(ref.shape)}")
    got, ref = got.detach().double(), ref.detach().double().to(got.device)
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# ------------------------------------------------------------------- environment


def git_commit() -> str | None:
    """The checkout's commit (short hash, ``-dirty`` with uncommitted changes to tracked
    files), or None outside a git checkout. ``MIMETIC_COMMIT`` in the environment wins: git
    on the device machine has reported a commit other than the tree that ran (an earlier
    session's), so a device command names its commit itself (``MIMETIC_COMMIT=<hash>``,
    the hash taken here when the command is written)."""
    if os.environ.get("MIMETIC_COMMIT"):
        return os.environ["MIMETIC_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


def package_version(name: str) -> str | None:
    """``name.__version__`` after importing it; None when it is not installed, else
    ``"import failed: ..."`` when importing it fails (a broken build of an optional peer,
    whose rows are then missing, says why)."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return getattr(importlib.import_module(name), "__version__", "?")
    except Exception as e:  # noqa: BLE001
        return f"import failed: {e!r}"


def env_info(device: str | torch.device | None = None, packages: Iterable[str] = (), **extra) -> dict:
    """What a result needs to be compared later: the device's name, torch / triton / CUDA
    / Python versions, torch's CPU threads, the UTC date, the commit, the versions of
    ``packages`` (peers compared against) and ``extra`` (the script's own settings)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine() or "cpu")
    info = dict(device=name, torch=torch.__version__, triton=package_version("triton"),
                cuda=torch.version.cuda, python=platform.python_version(),
                threads=torch.get_num_threads(), cores=os.cpu_count(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
                commit=git_commit())
    info.update({p: package_version(p) for p in packages})
    info.update(extra)
    return info


# ------------------------------------------------------------------- result files


def print_record(rec: dict) -> None:
    """One measured case as a JSON line on stdout (flushed: a run killed later keeps it)."""
    print(json.dumps(rec, default=str), flush=True)


def write_json(path: str | os.PathLike, data: Any, indent: int = 1) -> str:
    """data as indented JSON at path (its folder created); values JSON lacks become str."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=indent, default=str)
    return path


def fmt(x: Any, spec: str = ".0f") -> str:
    """``format(x, spec)``, or "-" for a missing value (a table cell)."""
    return "-" if x is None else format(x, spec)


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table; None cells print as "-"."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in row) + " |")
    return "\n".join(lines)


def write_results(out_dir: str | os.PathLike, name: str, info: dict, results: list,
                  table: tuple[Sequence[str], Iterable[Sequence[Any]]] | None = None,
                  tables: Sequence[tuple[str, Sequence[str], Iterable[Sequence[Any]]]] | None = None,
                  **extra) -> str:
    """``out_dir/name.json`` = {"info": info, **extra, "results": results}; with ``table``
    (head, rows) also ``out_dir/name.md``, the table in markdown under the device and
    commit, or with ``tables`` ((title, head, rows), ...) each table under its "###"
    title. Returns the JSON file's path."""
    path = write_json(os.path.join(os.fspath(out_dir), f"{name}.json"),
                      dict(info=info, **extra, results=results))
    if table is not None or tables is not None:
        with open(os.path.join(os.fspath(out_dir), f"{name}.md"), "w") as f:
            f.write(f"{name}: {info.get('device')}, torch {info.get('torch')}, "
                    f"commit {info.get('commit')}, {info.get('date')}\n")
            if table is not None:
                f.write("\n" + markdown_table(*table) + "\n")
            for title, head, rows in tables or ():
                f.write(f"\n### {title}\n\n{markdown_table(head, rows)}\n")
    return path
