"""Mamba-2's glue: split_views (a split whose backward takes gradients that already are
one tensor's blocks without a copy) and the layer on the Triton path, which hands its
scan x | B | C and dt in place and gets dx | dB | dC back as one tensor, against the
float64 layer."""
from __future__ import annotations

import copy
import importlib
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import mimetic.cpu as cpu
from mimetic.modules._packed import split_views
from mimetic.modules.mamba2 import Mamba2

from ..ops.numerics import TRITON_DEVICE, needs_triton, rel_err

aten = torch.ops.aten
COPIES = {aten.cat.default, aten.clone.default, aten.copy_.default, aten._to_copy.default}


def _in_triton_interpreter() -> bool:
    """Whether the Triton interpreter is on the stack (it stages kernel arguments with
    copies that a GPU does not make)."""
    frame = sys._getframe()
    while frame is not None:
        if "triton/runtime/interpreter" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


class _Ops(TorchDispatchMode):
    """The copy ops (``COPIES``) run while active, with the autograd node running them."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in COPIES and not _in_triton_interpreter():
            node = torch._C._current_autograd_node()
            self.seen.append((func, node.name() if node is not None else "forward"))
        return func(*args, **(kwargs or {}))


class _BlockGrads(torch.autograd.Function):
    """(a, b, c) -> their sum of sums; backward: the blocks of one (.., 7) tensor ``grad``,
    as the Triton scan returns dx, dB, dC."""

    @staticmethod
    def forward(ctx, a, b, c, grad):
        ctx.grad = grad
        return a.sum() + b.sum() + c.sum()

    @staticmethod
    def backward(ctx, _):
        return (*ctx.grad.split([3, 2, 2], dim=-1), None)


def test_split_views_takes_gradients_that_tile_one_tensor_as_is():
    t = torch.randn(2, 5, 7, requires_grad=True)
    grad = torch.randn(2, 5, 7)
    a, b, c = split_views(t * 1.0, [3, 2, 2])
    assert [p.shape[-1] for p in (a, b, c)] == [3, 2, 2]
    loss = _BlockGrads.apply(a, b, c, grad)
    with _Ops() as ops:
        loss.backward()
    assert not any(f is aten.cat.default for f, _ in ops.seen), ops.seen
    assert torch.equal(t.grad, grad)


def test_split_views_concatenates_other_gradients_as_autograd_does():
    t = torch.randn(2, 5, 7)
    leaves = [t.clone().requires_grad_(), t.clone().requires_grad_()]
    for leaf, split in zip(leaves, (lambda u: split_views(u, [3, 2, 2]),
                                    lambda u: u.split([3, 2, 2], dim=-1))):
        a, b, c = split(leaf * 1.0)
        ((a * 2).pow(2).sum() + b.sin().sum()).backward()   # c unused: its gradient is None
    assert torch.equal(leaves[0].grad, leaves[1].grad)
    assert not leaves[0].grad[..., 5:].any()


def test_split_views_refuses_sizes_that_do_not_add_up():
    with pytest.raises(ValueError, match="must add up to t's last dim 7"):
        split_views(torch.randn(2, 7), [3, 3])


@pytest.fixture
def triton_ops(monkeypatch):
    """The ops' "auto" backend picks Triton on this device (the interpreter on the CPU),
    as for CUDA tensors, and the CPU's whole-layer batch parallelism is off."""
    for name in ("causal_conv1d", "ssd", "rms_norm"):
        mod = importlib.import_module(f"mimetic.ops.{name}")
        orig = mod.resolve_backend
        monkeypatch.setattr(mod, "resolve_backend",
                            lambda backend, x, has_triton_kernel=True, _orig=orig: _orig(
                                "triton" if backend == "auto" else backend, x, has_triton_kernel))
    monkeypatch.setattr(cpu, "_workers", cpu.cpu_workers())  # restored after the test
    cpu.set_cpu_workers(1)


def _forward_backward(layer, u, dout):
    u = u.clone().requires_grad_()
    with _Ops() as ops:
        y = layer(u)
        y.backward(dout)
    return [y.detach(), u.grad] + [p.grad for p in layer.parameters()], ops.seen


@needs_triton
@pytest.mark.parametrize("kwargs", [
    pytest.param({}, id="default"),
    pytest.param({"ngroups": 2, "D_has_hdim": True, "dt_limit": (0.01, 0.5)}, id="groups"),
    pytest.param({"d_model": 96, "headdim": 8}, id="24-heads"),
])
def test_mamba2_on_triton_matches_float64_with_one_copy(kwargs, triton_ops):
    """Output and every gradient against the same layer in float64 (its PyTorch path).
    The forward copies nothing; the backward's copies are dB and dC (float32 sums)
    written into their blocks of the conv's gradient, the concatenation of in_proj's
    split's gradients (z, xBC, dt come from three ops), and parameter-sized casts."""
    torch.manual_seed(0)
    cfg = {"d_model": 32, "d_state": 16, "headdim": 16, "chunk_size": 16, **kwargs}
    layer = Mamba2(**cfg, device=TRITON_DEVICE)
    ref = copy.deepcopy(layer).double().cpu()
    g = torch.Generator().manual_seed(1)
    u, dout = torch.randn(2, 2, 37, cfg["d_model"], generator=g)
    got, seen = _forward_backward(layer, u.to(TRITON_DEVICE), dout.to(TRITON_DEVICE))
    want, _ = _forward_backward(ref, u.double(), dout.double())
    errs = [rel_err(a, b) for a, b in zip(got, want)]
    assert max(errs) < 2e-5, errs
    assert all(node != "forward" for _, node in seen), seen
    big = [(f, node) for f, node in seen if f is not aten._to_copy.default]
    assert [f for f, _ in big if f is not aten.copy_.default] == [aten.cat.default], big
    assert [node for f, node in big if f is aten.cat.default] == ["SplitWithSizesBackward0"]
