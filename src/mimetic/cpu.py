"""CPU parallelism: one pool of worker threads for the whole library.

On CPU two things split their work over the batch, one slice per Python thread: the
Mamba layers' full-sequence forward and backward (``mimetic.modules.batch_parallel``)
and the chunked selective scan (``mimetic.ops.selective_scan.chunked``). Each slice runs
its whole computation on one intra-op thread; torch releases the GIL inside ops, so the
slices run at once. An OpenMP team per op would instead meet at a barrier after every op
(about a thousand per layer), and on a CPU shared with other busy processes every
barrier waits for whichever thread the OS has descheduled (benchmarks/RESULTS.md, CPU).

Policy, all of it here:

* at most :func:`cpu_workers` slices (``set_cpu_workers(1)`` turns splitting off), and no
  more than ``torch.get_num_threads()`` (a user who asked torch for one thread gets one);
* no nesting: code already running as a slice (on a worker, or the caller's own share)
  does not split again (:func:`in_worker`), so a scan inside a batch-parallel layer
  runs whole on its slice's thread;
* one pool, sized by this module (grown when more workers are asked for) and rebuilt
  after a fork (a child inherits the executor object but not its threads).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Callable, Sequence

import torch

__all__ = ["cpu_workers", "in_worker", "one_intraop_thread", "run_slices", "set_cpu_workers",
           "split_batch", "workers_for"]

_workers = min(2, os.cpu_count() or 1)
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_threads = 0   # threads of _pool (tracked here: the executor does not say)
_pool_pid = -1
_pool_lock = threading.Lock()
_local = threading.local()   # .inside: this thread is running a slice


def set_cpu_workers(n: int) -> None:
    """Split CPU work over at most ``n`` threads (the calling thread and n - 1 workers);
    1 turns batch splitting off everywhere. The default is min(2, CPU count)."""
    global _workers
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_cpu_workers needs an integer >= 1, got {n!r}")
    _workers = n


def cpu_workers() -> int:
    """The current limit of :func:`set_cpu_workers`."""
    return _workers


def in_worker() -> bool:
    """True while this thread runs a slice of :func:`run_slices` (then do not split)."""
    return getattr(_local, "inside", False)


def workers_for(batch: int, work: int, min_work: int) -> int:
    """How many slices to split a batch of ``batch`` rows into, for ``work`` elements of
    work in all, when a slice is worth a thread only from ``min_work`` elements on: 1
    inside a slice, under torch.compile, or when splitting does not pay."""
    if in_worker() or torch.compiler.is_compiling():
        return 1
    return max(1, min(_workers, torch.get_num_threads(), batch, work // max(min_work, 1)))


def split_batch(batch: int, slices: int) -> list[tuple[int, int]]:
    """(start, end) of ``slices`` near-equal slices of range(batch)."""
    b = [batch * i // slices for i in range(slices + 1)]
    return list(zip(b[:-1], b[1:]))


@contextlib.contextmanager
def one_intraop_thread():
    """Run the block's ops on one intra-op (OpenMP) thread of this thread."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


@contextlib.contextmanager
def _as_slice():
    """Mark this thread as running a slice, on one intra-op thread."""
    inside = in_worker()
    _local.inside = True
    try:
        with one_intraop_thread():
            yield
    finally:
        _local.inside = inside


def _run_as_slice(job: Callable):
    with _as_slice():
        return job()


def _get_pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    global _pool, _pool_threads, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_threads < threads or _pool_pid != os.getpid():
            if _pool is not None and _pool_pid == os.getpid():
                _pool.shutdown(wait=False)
            _pool = concurrent.futures.ThreadPoolExecutor(threads, "mimetic-cpu")
            _pool_threads, _pool_pid = threads, os.getpid()
        return _pool


def run_slices(jobs: Sequence[Callable]) -> list:
    """Run the callables concurrently, each as a slice (one intra-op thread, no further
    splitting); the calling thread takes the first. Returns their results in order.
    Worker threads start with torch's default grad mode: a job sets the one it needs."""
    if len(jobs) == 1:
        return [_run_as_slice(jobs[0])]
    pool = _get_pool(len(jobs) - 1)
    futures = [pool.submit(_run_as_slice, job) for job in jobs[1:]]
    first = _run_as_slice(jobs[0])
    return [first] + [f.result() for f in futures]
