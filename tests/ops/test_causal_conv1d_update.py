"""The decoding step of the causal depthwise conv (``causal_conv1d_update``): steps from an
initial state against the full conv (reference), the Triton step against the PyTorch step
(output and the conv state shifted in place) over batch 1, dims that are not a multiple of
the block, widths 2 / 3 / 4, with / without bias, SiLU / none, fp32 / bf16 / fp16 inputs
with the state in x's dtype or in fp32, strided x (a column slice of a projection) and
strided states; the dispatch rules and the input checks.
"""
from __future__ import annotations

import pytest
import torch

from mimetic.ops import _dispatch as dispatch_module
from mimetic.ops import causal_conv1d, causal_conv1d_update
from mimetic.ops.causal_conv1d.reference import causal_conv1d_ref

from .numerics import TRITON_DEVICE, backend_params, device_of, needs_triton, randn, randn64, rel_err

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Triton against the PyTorch step on the same inputs, ||got - ref|| / ||ref||: both compute
# in float32 from the same rounded inputs, so only the summation order and the output
# rounding differ.
TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def rnd(g, *shape, dtype=torch.float32):
    """Draws for the Triton-vs-PyTorch tests, on the Triton device."""
    return randn(g, *shape, dtype=dtype, device=TRITON_DEVICE)


def seeded(device, *shape, seed=0, dtype=torch.float32):
    """Fresh float64 draws of one seed, cast and moved."""
    return randn64(torch.Generator().manual_seed(seed), *shape).to(device, dtype)


# ---------------------------------------------------------------- steps against the full conv


@pytest.mark.parametrize("backend", backend_params("torch", "triton"))
@pytest.mark.parametrize("activation", [None, "silu"], ids=["plain", "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_steps_match_full_conv(backend, activation, dtype):
    """L steps from an initial state == the reference conv over the sequence (float32
    weights, x in dtype)."""
    batch, dim, L, W = 2, 4, 9, 4
    dev = device_of(backend)
    x, w, bias = seeded(dev, batch, dim, L, dtype=dtype), seeded(dev, dim, W, seed=1), seeded(dev, dim, seed=2)
    past = seeded(dev, batch, dim, W - 1, seed=3)
    full, final = causal_conv1d_ref(x.float(), w, bias, activation=activation,
                                    initial_states=past, return_final_states=True)
    state = past.clone()
    ys = [causal_conv1d_update(x[:, :, t], state, w, bias, activation=activation, backend=backend)
          for t in range(L)]
    y = torch.stack(ys, dim=-1)
    assert y.dtype == dtype
    # float32: same arithmetic; bf16: one rounding of the output (2^-8 relative).
    tol = 1e-6 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(y.float(), full, rtol=tol, atol=tol)
    torch.testing.assert_close(state, final, rtol=0, atol=0)


@pytest.mark.parametrize("backend", backend_params("torch", "triton"))
@pytest.mark.parametrize("width", [2, 3, 4], ids=lambda w: f"W{w}")
def test_steps_match_full_conv_widths(backend, width):
    """L steps from an initial state == the full causal conv over the sequence, float32."""
    batch, dim, L = 2, 19, 9
    dev = device_of(backend)
    g = torch.Generator().manual_seed(width)
    x, past = randn(g, batch, dim, L, device=dev), randn(g, batch, dim, width - 1, device=dev)
    weight, bias = randn(g, dim, width, device=dev), randn(g, dim, device=dev)
    full, final = causal_conv1d(x, weight, bias, activation="silu", initial_states=past,
                                return_final_states=True, backend="reference")
    state = past.clone()
    ys = [causal_conv1d_update(x[:, :, t], state, weight, bias, activation="silu", backend=backend)
          for t in range(L)]
    torch.testing.assert_close(torch.stack(ys, dim=-1), full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state, final, rtol=0, atol=0)


# ---------------------------------------------------------------- Triton against the PyTorch step


def run_both(x, state, weight, bias, activation):
    """(out, state after) of the Triton and of the PyTorch step, each on its own state copy."""
    results = []
    for backend in ("triton", "torch"):
        s = state.clone()
        results.append((causal_conv1d_update(x, s, weight, bias, activation=activation,
                                             backend=backend), s))
    return results


SHAPES = [  # (batch, dim, width)
    (1, 5, 4),
    (3, 37, 2),
    (2, 300, 3),  # more than one block of channels, the last one partial
    (4, 16, 4),
]


@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=lambda c: "x".join(map(str, c)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("state_fp32", [False, True], ids=["state_x_dtype", "state_fp32"])
def test_triton_matches_torch(shape, dtype, state_fp32):
    batch, dim, width = shape
    g = torch.Generator().manual_seed(dim * width)
    x = rnd(g, batch, dim, dtype=dtype)
    state = rnd(g, batch, dim, width - 1, dtype=torch.float32 if state_fp32 else dtype)
    weight, bias = rnd(g, dim, width), rnd(g, dim)
    for use_bias in (False, True):
        for activation in (None, "silu"):
            (y, s), (y_ref, s_ref) = run_both(x, state, weight, bias if use_bias else None,
                                              activation)
            assert y.dtype == dtype and y.is_contiguous() and s.dtype == state.dtype
            assert rel_err(y, y_ref) < TOL[dtype], (use_bias, activation)
            assert torch.equal(s, s_ref)  # the shift is exact


@needs_triton
def test_triton_low_precision_weight_and_swish():
    """bf16 weight and bias (as under a bf16 model), "swish" spelling of SiLU."""
    g = torch.Generator().manual_seed(5)
    x, state = rnd(g, 2, 24, dtype=torch.bfloat16), rnd(g, 2, 24, 3, dtype=torch.bfloat16)
    weight, bias = rnd(g, 24, 4, dtype=torch.bfloat16), rnd(g, 24, dtype=torch.bfloat16)
    (y, s), (y_ref, s_ref) = run_both(x, state, weight, bias, "swish")
    assert rel_err(y, y_ref) < TOL[torch.bfloat16] and torch.equal(s, s_ref)


@needs_triton
@pytest.mark.parametrize("state_layout", ["transposed", "sliced"])
def test_triton_strided_x_state_and_weight(state_layout):
    """x a column slice of a wider projection, the state a non-contiguous view (updated
    through the view, in place), the weight a view of the (dim, 1, width) parameter."""
    batch, dim, width = 3, 40, 4
    g = torch.Generator().manual_seed(6)
    proj = rnd(g, batch, 3 * dim + 7)
    x = proj[:, dim + 3:2 * dim + 3]
    assert x.stride() == (3 * dim + 7, 1)
    weight = rnd(g, dim, 1, width)[:, 0]  # as rearrange(conv1d.weight, "d 1 w -> d w")
    bias = rnd(g, dim)
    base_t = rnd(g, batch, width - 1, dim)
    base_s = rnd(g, batch, dim, width + 2)
    outs = []
    for backend in ("triton", "torch"):
        if state_layout == "transposed":
            base = base_t.clone()
            state = base.transpose(1, 2)  # (batch, dim, width-1), channel stride 1
        else:
            base = base_s.clone()
            state = base[:, :, 2:2 + width - 1]  # (batch, dim, width-1) inside a wider buffer
        assert not state.is_contiguous()
        ptr = state.data_ptr()
        y = causal_conv1d_update(x, state, weight, bias, activation="silu", backend=backend)
        assert state.data_ptr() == ptr and y.is_contiguous()
        outs.append((y, base))
    assert rel_err(outs[0][0], outs[1][0]) < 1e-6
    assert torch.equal(outs[0][1], outs[1][1])  # the state moved, the rest of base did not


# ---------------------------------------------------------------- dispatch


def conv_inputs(dtype=torch.float32, device=None):
    g = torch.Generator().manual_seed(7)
    device = device or TRITON_DEVICE
    r = lambda *s: randn(g, *s, dtype=dtype, device=device)  # noqa: E731
    return r(2, 6), r(2, 6, 3), r(6, 4), r(6)


@needs_triton
def test_triton_grad_rule():
    x, state, weight, bias = conv_inputs()
    weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="no backward"):
        causal_conv1d_update(x, state.clone(), weight, bias, backend="triton")
    with torch.no_grad():  # no gradient wanted: the kernel runs
        y = causal_conv1d_update(x, state.clone(), weight, bias, backend="triton")
    y_ref = causal_conv1d_update(x, state.clone(), weight, bias, backend="torch")
    assert y_ref.requires_grad and not y.requires_grad
    assert rel_err(y, y_ref) < 1e-6


@needs_triton
def test_auto_takes_kernel_unless_grad_or_float64(monkeypatch):
    """"auto" as it resolves on CUDA: the kernel, but the PyTorch step when a gradient is
    wanted or for float64."""
    from mimetic.ops.causal_conv1d import step_triton

    calls = []
    kernel = step_triton.causal_conv1d_update_triton
    monkeypatch.setattr(dispatch_module, "resolve_backend", lambda backend, x, **kw: "triton")
    monkeypatch.setattr(step_triton, "causal_conv1d_update_triton",
                        lambda *a, **kw: calls.append(1) or kernel(*a, **kw))
    x, state, weight, bias = conv_inputs()
    causal_conv1d_update(x, state, weight, bias)
    assert calls == [1]
    weight.requires_grad_(True)
    y = causal_conv1d_update(x, state, weight, bias)
    assert y.requires_grad and calls == [1]  # fell back to the differentiable step
    x, state, weight, bias = conv_inputs(torch.float64)
    y = causal_conv1d_update(x, state, weight, bias, backend="triton")
    assert y.dtype == torch.float64 and calls == [1]


# ---------------------------------------------------------------- input checks


@pytest.mark.parametrize("backend", backend_params("auto", "torch", "triton"))
def test_validation(backend):
    x, state, weight, bias = conv_inputs(device=device_of(backend))
    with pytest.raises(ValueError, match="conv_state"):
        causal_conv1d_update(x, state[:, :, :2], weight, backend=backend)
    with pytest.raises(ValueError, match="weight must have shape"):
        causal_conv1d_update(x, state, weight[:5], backend=backend)
    with pytest.raises(ValueError, match="bias must have shape"):
        causal_conv1d_update(x, state, weight, bias[:5], backend=backend)
    with pytest.raises(ValueError, match="x must have shape"):
        causal_conv1d_update(x[:, :, None], state, weight, backend=backend)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_update(x, state, weight, activation="relu", backend=backend)
    with pytest.raises(TypeError, match="conv_state must be a floating"):
        causal_conv1d_update(x, state.long(), weight, backend=backend)
