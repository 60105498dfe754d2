"""Mamba-1 layer (selective SSM), with ``mamba_ssm``'s constructor and parameter names."""
from __future__ import annotations

import concurrent.futures
import math
import os

import torch
from einops import rearrange
from torch import nn

from ..ops import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update


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
        batch = x.shape[0]
        bounds = [batch * i // workers for i in range(workers + 1)]
        need_x = x.requires_grad

        def job(b0, b1):
            def run():
                with torch.enable_grad():
                    xs = x[b0:b1].detach().requires_grad_(need_x)
                    return xs, fn(xs)
            return run

        ctx.parts = _on_workers([job(bounds[i], bounds[i + 1]) for i in range(workers)])
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


class Mamba(nn.Module):
    """Selective state space layer (Gu & Dao 2023).

    in_proj: d_model -> 2*d_inner (x, z); causal depthwise conv + SiLU on x; x_proj gives
    (dt, B, C) from x; delta = softplus(dt_proj(dt) + bias); selective scan with A =
    -exp(A_log) and skip D; gate with SiLU(z); out_proj back to d_model.

    Input and output: (batch, length, d_model).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,  # accepted for mamba_ssm compatibility; ops pick the path
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.layer_idx = layer_idx
        self.dt_init_cfg = dict(dt_min=dt_min, dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale,
                                dt_init_floor=dt_init_floor)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, device=device))
        self.D = nn.Parameter(torch.empty(self.d_inner, device=device))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        from ..init import default_init_mamba_

        default_init_mamba_(self)

    def forward(self, hidden_states: torch.Tensor, cache=None) -> torch.Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_model). With ``cache`` (a
        :class:`~mimetic.models.cache.SSMState`), fills it with the final conv and SSM
        states (prefill) or, for L == 1 and a warm cache, takes one recurrent step."""
        if cache is not None and cache.seqlen_offset > 0:
            if hidden_states.shape[1] != 1:
                raise ValueError("a warm cache can only be advanced one token at a time")
            return self.step(hidden_states, cache)
        if cache is None:
            return batch_parallel(self, self._forward, hidden_states)
        return self._forward(hidden_states, cache)

    def _forward(self, hidden_states: torch.Tensor, cache=None) -> torch.Tensor:
        xz = rearrange(self.in_proj(hidden_states), "b l d -> b d l")
        x, z = xz.chunk(2, dim=1)  # (batch, d_inner, L) each
        x = causal_conv1d(x, rearrange(self.conv1d.weight, "d 1 w -> d w"), self.conv1d.bias,
                          activation="silu", return_final_states=cache is not None)
        if cache is not None:
            x, cache.conv_state = x
        dt, B, C = self.x_proj(rearrange(x, "b d l -> b l d")).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = rearrange(dt @ self.dt_proj.weight.t(), "b l d -> b d l")  # bias goes in the scan
        B = rearrange(B, "b l n -> b n l")
        C = rearrange(C, "b l n -> b n l")
        y = selective_scan(x, dt, self.A, B, C, self.D.float(), z=z,
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                           return_last_state=cache is not None)
        if cache is not None:
            y, cache.ssm_state = y
        return self.out_proj(rearrange(y, "b d l -> b l d"))

    @property
    def A(self) -> torch.Tensor:
        """State matrix (d_inner, d_state), negative real."""
        return -torch.exp(self.A_log.float())

    def step(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        """One decoding step: hidden_states (batch, 1, d_model) -> (batch, 1, d_model)."""
        x, z = self.in_proj(hidden_states.squeeze(1)).chunk(2, dim=-1)  # (batch, d_inner)
        x = causal_conv1d_update(x, cache.conv_state, rearrange(self.conv1d.weight, "d 1 w -> d w"),
                                 self.conv1d.bias, activation="silu")
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = dt @ self.dt_proj.weight.t()
        y = selective_state_update(cache.ssm_state, x, dt, self.A, B, C, self.D, z=z,
                                   dt_bias=self.dt_proj.bias, dt_softplus=True)
        return self.out_proj(y).unsqueeze(1)

    def allocate_state(self, batch_size: int, device=None, dtype=None):
        """Zero conv state (batch, d_inner, d_conv-1) and SSM state (batch, d_inner, d_state)."""
        device = device or self.out_proj.weight.device
        dtype = dtype or self.conv1d.weight.dtype
        conv = torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32)
        return conv, ssm
