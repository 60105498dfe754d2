"""Causal depthwise conv1d (torch path vs reference, decode step vs full conv) and gated
RMSNorm (against the formula written out by hand)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mimetic.ops import causal_conv1d, causal_conv1d_update, rms_norm
from mimetic.ops.causal_conv1d.reference import causal_conv1d_ref


def rnd(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------- causal conv1d


def conv_by_hand(x, w, bias, past):
    """out[:, d, t] = bias[d] + sum_k w[d, k] x[:, d, t - (W-1) + k], x before 0 from past."""
    W = w.shape[1]
    full = torch.cat([past, x], dim=-1)
    out = torch.zeros_like(x)
    for t in range(x.shape[-1]):
        out[:, :, t] = (full[:, :, t:t + W] * w).sum(-1) + bias
    return out


def test_reference_matches_formula():
    x, w, bias, past = rnd(2, 3, 6, dtype=torch.float64), rnd(3, 4, seed=1, dtype=torch.float64), \
        rnd(3, seed=2, dtype=torch.float64), rnd(2, 3, 3, seed=3, dtype=torch.float64)
    out = causal_conv1d_ref(x, w, bias, initial_states=past)
    torch.testing.assert_close(out, conv_by_hand(x, w, bias, past), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("L", [1, 2, 7, 33])
@pytest.mark.parametrize("W", [2, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_states", [False, True])
def test_torch_matches_reference(L, W, activation, with_states):
    batch, dim = 2, 5
    x = rnd(batch, dim, L).requires_grad_()
    w = rnd(dim, W, seed=1).requires_grad_()
    bias = rnd(dim, seed=2).requires_grad_()
    past = rnd(batch, dim, W - 1, seed=3).requires_grad_() if with_states else None
    outs, grads = [], []
    for backend in ("torch", "reference"):
        res = causal_conv1d(x, w, bias, activation=activation, initial_states=past,
                            return_final_states=True, backend=backend)
        out, final = res
        loss = (out * rnd(*out.shape, seed=4)).sum() + (final * rnd(*final.shape, seed=5)).sum()
        leaves = [t for t in (x, w, bias, past) if t is not None]
        outs.append((out, final))
        grads.append(torch.autograd.grad(loss, leaves))
    for a, b in zip(outs[0], outs[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_final_states_are_last_inputs():
    x, past = rnd(2, 3, 2), rnd(2, 3, 3, seed=1)  # L shorter than W - 1
    for backend in ("torch", "reference"):
        _, final = causal_conv1d(x, rnd(3, 4, seed=2), initial_states=past,
                                 return_final_states=True, backend=backend)
        torch.testing.assert_close(final, torch.cat([past, x], -1)[:, :, -3:], rtol=0, atol=0)


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_update_steps_match_full_conv(activation, dtype):
    batch, dim, L, W = 2, 4, 9, 4
    x, w, bias = rnd(batch, dim, L, dtype=dtype), rnd(dim, W, seed=1), rnd(dim, seed=2)
    past = rnd(batch, dim, W - 1, seed=3)
    full, final = causal_conv1d_ref(x.float(), w, bias, activation=activation,
                                    initial_states=past, return_final_states=True)
    state = past.clone()
    ys = [causal_conv1d_update(x[:, :, t], state, w, bias, activation=activation)
          for t in range(L)]
    y = torch.stack(ys, dim=-1)
    assert y.dtype == dtype
    # float32: same arithmetic; bf16: one rounding of the output (2^-8 relative).
    tol = 1e-6 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(y.float(), full, rtol=tol, atol=tol)
    torch.testing.assert_close(state, final, rtol=0, atol=0)


def test_conv_validation():
    x, w = rnd(2, 3, 5), rnd(3, 4)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, w, activation="relu")
    with pytest.raises(ValueError, match="weight must have shape"):
        causal_conv1d(x, rnd(4, 4))
    with pytest.raises(ValueError, match="initial_states"):
        causal_conv1d(x, w, initial_states=rnd(2, 3, 2))
    with pytest.raises(TypeError, match="x must be a floating"):
        causal_conv1d(x.long(), w)
    with pytest.raises(ValueError, match="one device"):
        causal_conv1d(x, w.to("meta"))
    with pytest.raises(ValueError, match="conv_state"):
        causal_conv1d_update(x[:, :, 0], rnd(2, 3, 2), w)


# ---------------------------------------------------------------- gated RMSNorm


def rms_by_hand(x, w, b=None, z=None, eps=1e-5, group_size=None, norm_before_gate=False,
                residual=None):
    """The gated RMSNorm formula, element by element over the groups, in float64."""
    x = x.double()
    if residual is not None:
        x = x + residual.double()
    h = x if z is None or norm_before_gate else x * (z.double() * torch.sigmoid(z.double()))
    gs = h.shape[-1] if group_size is None else group_size
    out = torch.empty_like(h)
    for start in range(0, h.shape[-1], gs):
        part = h[..., start:start + gs]
        out[..., start:start + gs] = part / torch.sqrt((part ** 2).mean(-1, keepdim=True) + eps)
    out = out * w.double()
    if b is not None:
        out = out + b.double()
    if z is not None and norm_before_gate:
        out = out * (z.double() * torch.sigmoid(z.double()))
    return out, x


@pytest.mark.parametrize("group_size", [None, 2, 4])
@pytest.mark.parametrize("gate", [None, "before", "after"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_rms_norm_formula(group_size, gate, with_bias):
    x, w = rnd(3, 5, 8), rnd(8, seed=1)
    b = rnd(8, seed=2) if with_bias else None
    z = rnd(3, 5, 8, seed=3) if gate else None
    out = rms_norm(x, w, b, z=z, group_size=group_size, norm_before_gate=gate == "after")
    want, _ = rms_by_hand(x, w, b, z, group_size=group_size, norm_before_gate=gate == "after")
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("residual_in_fp32", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_residual_prenorm(residual_in_fp32, dtype):
    x, w, res = rnd(2, 4, 6, dtype=dtype), rnd(6, seed=1), rnd(2, 4, 6, seed=2, dtype=dtype)
    out, new_res = rms_norm(x, w, residual=res, prenorm=True, residual_in_fp32=residual_in_fp32)
    want, want_res = rms_by_hand(x, w, residual=res)
    assert out.dtype == dtype
    assert new_res.dtype == (torch.float32 if residual_in_fp32 else dtype)
    tol = 1e-5 if dtype == torch.float32 else 8e-3
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(new_res.double(), want_res, rtol=tol, atol=tol)
    # Without prenorm only the output comes back, and it is the same.
    torch.testing.assert_close(rms_norm(x, w, residual=res), out, rtol=0, atol=0)


def test_rms_norm_gradients_match_formula():
    x, w, z = (rnd(2, 3, 4, dtype=torch.float64).requires_grad_(),
               rnd(4, seed=1, dtype=torch.float64).requires_grad_(),
               rnd(2, 3, 4, seed=2, dtype=torch.float64).requires_grad_())
    got = torch.autograd.grad(rms_norm(x, w, z=z, group_size=2).sum(), (x, w, z))
    want = torch.autograd.grad(rms_by_hand(x, w, z=z, group_size=2)[0].sum(), (x, w, z))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_rms_norm_validation():
    x, w = rnd(2, 6), rnd(6)
    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm(x, rnd(5))
    with pytest.raises(ValueError, match="group_size"):
        rms_norm(x, w, group_size=4)
    with pytest.raises(ValueError, match="z must have"):
        rms_norm(x, w, z=rnd(2, 5))
    with pytest.raises(ValueError, match="residual must have"):
        rms_norm(x, w, residual=rnd(3, 6))
    with pytest.raises(TypeError, match="must be a floating"):
        rms_norm(x.int(), w)


def test_silu_is_swish():
    x, w = rnd(1, 2, 5), rnd(2, 3)
    torch.testing.assert_close(causal_conv1d(x, w, activation="silu"),
                               causal_conv1d(x, w, activation="swish"))
    torch.testing.assert_close(causal_conv1d(x, w, activation="silu"),
                               F.silu(causal_conv1d(x, w)))
