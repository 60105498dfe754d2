"""Whole-layer batch parallelism on CPU, used by the Mamba layers' full-sequence forward."""
from __future__ import annotations

import concurrent.futures
import os

import torch
from torch import nn

# Whole-layer batch parallelism on CPU. Without grad-free caching, a layer's forward and
# backward are run on slices of the batch, one slice per Python thread, each on one
# intra-op thread (torch releases the GIL inside ops). Every op of the layer then runs
# without an OpenMP team: on this shared 2-core CPU a team meets at a barrier per op, and
# each barrier waits for whichever thread the OS has descheduled. Training step of
# benchmarks/cpu.py (2 layers, batch 16, L 256), torch threads 2, A/B interleaved in one
# process, median of 5: at load 3.2-3.9, Mamba-1 1.86 s -> 1.26 s, Mamba-2 1.29 s ->
# 0.41 s; at load ~2.6 (median of 11) Mamba-1 0.30 s -> 0.31 s (no gain when a core is
# free, no loss). Slices use the layer's real parameters, so gradients agree with the
# unsplit layer up to summation order. ``LAYER_WORKERS`` = 1 turns this off.
LAYER_WORKERS = min(2, os.cpu_count() or 1)
_MIN_LAYER_WORK = 1 << 18  # batch * L * d_inner below which one thread does it all
_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_PID = -1


def _one_thread(fn, *args):
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _on_workers(jobs):
    """Run the callables in ``jobs`` concurrently (the calling thread takes the first), each
    on one intra-op thread; returns their results in order."""
    global _POOL, _POOL_PID
    if _POOL is None or _POOL._max_workers < len(jobs) - 1 or _POOL_PID != os.getpid():
        _POOL = concurrent.futures.ThreadPoolExecutor(len(jobs) - 1, "mimetic-layer")
        _POOL_PID = os.getpid()
    futures = [_POOL.submit(_one_thread, job) for job in jobs[1:]]
    first = _one_thread(jobs[0])
    return [first] + [f.result() for f in futures]


class _BatchParallel(torch.autograd.Function):
    """y = fn(x) computed per batch slice on worker threads, each slice keeping its own
    autograd graph (built with the layer's real parameters) for the backward, which runs
    ``torch.autograd.grad`` per slice on the workers and sums the parameter gradients."""

    @staticmethod
    def forward(ctx, fn, workers, x, *params):
        need_x = x.requires_grad

        def job(b0, b1):
            def run():
                with torch.enable_grad():
                    xs = x[b0:b1].detach().requires_grad_(need_x)
                    return xs, fn(xs)
            return run

        ctx.parts = _on_workers([job(b0, b1) for b0, b1 in _bounds(x.shape[0], workers)])
        ctx.params = params
        return torch.cat([y.detach() for _, y in ctx.parts], dim=0)

    @staticmethod
    def backward(ctx, gy):
        params = [p for p, need in zip(ctx.params, ctx.needs_input_grad[3:]) if need]
        need_x = ctx.needs_input_grad[2]
        sizes = [xs.shape[0] for xs, _ in ctx.parts]
        gys = gy.split(sizes, dim=0)

        def job(i):
            xs, y = ctx.parts[i]
            inputs = ([xs] if need_x else []) + params
            return lambda: torch.autograd.grad(y, inputs, gys[i], allow_unused=True)

        grads = _on_workers([job(i) for i in range(len(ctx.parts))])
        ctx.parts = ctx.params = None
        gx = torch.cat([g[0] for g in grads], dim=0) if need_x else None
        k = 1 if need_x else 0
        summed = iter([_sum_or_none([g[k + j] for g in grads]) for j in range(len(params))])
        gparams = [next(summed) if need else None for need in ctx.needs_input_grad[3:]]
        return (None, None, gx, *gparams)


def _sum_or_none(gs):
    gs = [g for g in gs if g is not None]
    if not gs:
        return None
    out = gs[0]
    for g in gs[1:]:
        out = out + g
    return out


def batch_parallel(module: nn.Module, fn, x: torch.Tensor) -> torch.Tensor:
    """fn(x) for a layer's full-sequence forward, split over the batch on CPU threads when
    that pays (see ``LAYER_WORKERS``); otherwise plain fn(x). fn may use only x and
    ``module``'s parameters, and must treat batch rows independently."""
    if torch.compiler.is_compiling() or x.device.type != "cpu":
        return fn(x)
    batch, L = x.shape[0], x.shape[1]
    workers = min(LAYER_WORKERS, torch.get_num_threads(), batch,
                  max(1, batch * L * getattr(module, "d_inner", 1) // _MIN_LAYER_WORK))
    if workers <= 1:
        return fn(x)
    if not torch.is_grad_enabled():  # grad mode is per thread: keep it off on the workers
        def job(b0, b1):
            def run():
                with torch.no_grad():
                    return fn(x[b0:b1])
            return run

        return torch.cat(_on_workers([job(b0, b1) for b0, b1 in _bounds(batch, workers)]), dim=0)
    params = [p for p in module.parameters()]
    return _BatchParallel.apply(fn, workers, x, *params)


def _bounds(batch, workers):
    b = [batch * i // workers for i in range(workers + 1)]
    return list(zip(b[:-1], b[1:]))
