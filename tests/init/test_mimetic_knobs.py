"""The knobs of mimetic init beyond the basic recipe: tie_conv, bc_alpha, horizon/keep."""
import math

import pytest
import torch

from mimetic import Mamba, Mamba2, MambaConfig, MambaLM, mimetic_init_
from mimetic.init import MimeticConfig


def _mamba2(**knobs) -> Mamba2:
    torch.manual_seed(0)
    return mimetic_init_(Mamba2(d_model=32, d_state=8, headdim=16, ngroups=2), **knobs)


def _bc_slices(m: Mamba2):
    """(B conv channels, C conv channels, B in_proj rows, C in_proj rows) of a Mamba2 layer."""
    d_inner, gn = m.d_inner, m.ngroups * m.d_state
    conv_b, conv_c = slice(d_inner, d_inner + gn), slice(d_inner + gn, d_inner + 2 * gn)
    rows = m.in_proj.weight.shape[0] - m.nheads
    return conv_b, conv_c, slice(rows - 2 * gn, rows - gn), slice(rows - gn, rows)


def test_tie_conv_copies_b_conv_taps_and_bias_to_c_and_leaves_the_rest():
    torch.manual_seed(0)
    ref = Mamba2(d_model=32, d_state=8, headdim=16, ngroups=2)
    tied = _mamba2(tie_conv=True)
    conv_b, conv_c, _, _ = _bc_slices(tied)
    assert torch.equal(tied.conv1d.weight[conv_c], tied.conv1d.weight[conv_b])
    assert torch.equal(tied.conv1d.bias[conv_c], tied.conv1d.bias[conv_b])
    assert torch.equal(tied.conv1d.weight[: conv_c.start], ref.conv1d.weight[: conv_c.start])
    untied = _mamba2()
    assert not torch.equal(untied.conv1d.weight[conv_c], untied.conv1d.weight[conv_b])


def test_tie_conv_is_a_no_op_on_mamba1():
    torch.manual_seed(0)
    a = mimetic_init_(Mamba(d_model=32, d_state=8))
    torch.manual_seed(0)
    b = mimetic_init_(Mamba(d_model=32, d_state=8), tie_conv=True)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


def test_bc_alpha_makes_c_rows_a_random_mix_of_b_rows():
    m = _mamba2(bc_alpha=0.5)
    _, _, rows_b, rows_c = _bc_slices(m)
    w_b, w_c = m.in_proj.weight[rows_b], m.in_proj.weight[rows_c]
    assert not torch.allclose(w_b, w_c)
    # W_C = (I + alpha Z) W_B: W_C lies in the row span of W_B (W_B has full row rank here).
    coef = torch.linalg.lstsq(w_b.T, w_c.T).solution.T
    torch.testing.assert_close(coef @ w_b, w_c, atol=1e-5, rtol=1e-4)
    deviation = coef - torch.eye(coef.shape[0])
    assert 0.2 < deviation.std() * math.sqrt(coef.shape[0]) / 0.5 < 5  # Z's scale, loosely
    assert torch.equal(_mamba2().in_proj.weight[rows_b], _mamba2().in_proj.weight[rows_c])


@pytest.mark.parametrize("horizon,keep,dt", [(64, 0.9, 1.0), (1024, 0.9, 1.0), (256, 0.5, 0.5)])
def test_horizon_sets_a_log_so_the_decay_over_the_horizon_is_keep(horizon, keep, dt):
    m = _mamba2(horizon=horizon, keep=keep, dt=dt)
    a = -torch.exp(m.A_log.double())
    decay = torch.exp(horizon * dt * a)
    torch.testing.assert_close(decay, torch.full_like(decay, keep))
    assert MimeticConfig(horizon=1024).A_log == pytest.approx(math.log(0.105 / 1024), abs=0.01)


@pytest.mark.parametrize("knobs,match", [
    ({"horizon": 64, "a_log": -6.0}, "not both"),
    ({"horizon": 0}, "horizon"),
    ({"horizon": 2.5}, "horizon"),
    ({"keep": 1.0}, "keep"),
    ({"a_log": float("nan")}, "a_log"),
    ({"dt": float("inf")}, "dt"),
    ({"tie_conv": "no"}, "tie_conv"),
    ({"bc_alpha": "0.5"}, "bc_alpha"),
])
def test_bad_knobs_are_one_line_errors(knobs, match):
    with pytest.raises(ValueError, match=match):
        MimeticConfig(**knobs)


def test_model_config_takes_the_new_knobs():
    cfg = MambaConfig(d_model=32, n_layer=1, vocab_size=10, ssm_cfg={"layer": "Mamba2", "headdim": 16, "d_state": 8},
                      init="mimetic", init_cfg={"tie_conv": True, "horizon": 65})
    m = MambaLM(cfg).backbone.layers[0].mixer
    conv_b, conv_c, _, _ = _bc_slices(m)
    assert torch.equal(m.conv1d.weight[conv_c], m.conv1d.weight[conv_b])
    assert torch.allclose(m.A_log, torch.full_like(m.A_log, MimeticConfig(horizon=65).A_log))
