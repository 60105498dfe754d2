"""CPU fast paths of the layers: batch-parallel layers and the shifted-add causal conv."""
from __future__ import annotations

import pytest
import torch

import mimetic.cpu as cpu
import mimetic.modules.batch_parallel as batch_parallel_mod
from mimetic.modules.mamba import Mamba
from mimetic.modules.mamba2 import Mamba2
from mimetic.ops.causal_conv1d.reference import causal_conv1d_ref
from mimetic.ops.causal_conv1d.shifted import causal_conv1d_torch


def _grads(layer, x, workers, monkeypatch):
    monkeypatch.setattr(cpu, "_workers", cpu.cpu_workers())  # restored after the test
    cpu.set_cpu_workers(workers)
    monkeypatch.setattr(batch_parallel_mod, "_MIN_LAYER_WORK", 1)
    x = x.clone().requires_grad_()
    y = layer(x)
    y.pow(2).sum().backward()
    out = [y.detach(), x.grad] + [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad(set_to_none=True)
    with torch.no_grad():
        y = layer(x)
    assert not y.requires_grad
    return out + [y]


@pytest.mark.parametrize("make", [lambda: Mamba(16, d_state=4),
                                  lambda: Mamba2(32, d_state=8, headdim=16, chunk_size=8)])
def test_batch_parallel_matches_single_thread(make, monkeypatch):
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(3, 13, layer.d_model)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, 2))  # a split needs two intra-op threads to share out
    one = _grads(layer, x, 1, monkeypatch)
    two = _grads(layer, x, 2, monkeypatch)
    torch.set_num_threads(threads)
    for a, b in zip(one, two):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("step_major", [True, False])
@pytest.mark.parametrize("with_states", [True, False])
def test_conv_gradcheck(step_major, with_states):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x = r(2, 6, 3).transpose(1, 2) if step_major else r(2, 3, 6)
    x.requires_grad_()
    w, b, h = r(3, 4).requires_grad_(), r(3).requires_grad_(), r(2, 3, 3).requires_grad_()
    if with_states:
        f = lambda x, w, b, h: causal_conv1d_torch(x, w, b, "silu", h, True)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, w, b, h))
        for got, want in zip(f(x, w, b, h), causal_conv1d_ref(x, w, b, "silu", h, True)):
            torch.testing.assert_close(got, want)
    else:
        assert torch.autograd.gradcheck(lambda x, w, b: causal_conv1d_torch(x, w, b), (x, w, b))
