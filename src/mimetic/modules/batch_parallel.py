"""Whole-layer batch parallelism on CPU, used by the Mamba layers' full-sequence forward.

Without grad-free caching, a layer's forward and backward run on slices of the batch,
one slice per thread of ``mimetic.cpu``'s pool, each on one intra-op thread (the policy
and its reasons are in that module; ``mimetic.cpu.set_cpu_workers(1)`` turns this off).
Slices use the layer's real parameters, so gradients agree with the unsplit layer up to
summation order. Timings: benchmarks/RESULTS.md (CPU).
"""
from __future__ import annotations

import torch
from torch import nn

from ..cpu import run_slices, split_batch, workers_for

_MIN_LAYER_WORK = 1 << 18  # batch * L * d_inner below which one thread does it all


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

        ctx.parts = run_slices([job(b0, b1) for b0, b1 in split_batch(x.shape[0], workers)])
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

        grads = run_slices([job(i) for i in range(len(ctx.parts))])
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
    that pays (``mimetic.cpu.workers_for``); otherwise plain fn(x). fn may use only x and
    ``module``'s parameters, and must treat batch rows independently."""
    if x.device.type != "cpu":
        return fn(x)
    batch, L = x.shape[0], x.shape[1]
    workers = workers_for(batch, batch * L * getattr(module, "d_inner", 1), _MIN_LAYER_WORK)
    if workers <= 1:
        return fn(x)
    if not torch.is_grad_enabled():  # grad mode is per thread: keep it off on the workers
        def job(b0, b1):
            def run():
                with torch.no_grad():
                    return fn(x[b0:b1])
            return run

        return torch.cat(run_slices([job(b0, b1) for b0, b1 in split_batch(batch, workers)]), dim=0)
    params = [p for p in module.parameters()]
    return _BatchParallel.apply(fn, workers, x, *params)
