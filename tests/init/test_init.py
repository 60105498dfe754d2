"""Default init reproduces mamba_ssm's; mimetic init makes layers start as linear attention."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimetic import Mamba, Mamba2, MambaConfig, MambaLM, mimetic_init_
from mimetic.init import MimeticConfig, inverse_softplus


def test_inverse_softplus():
    x = torch.tensor([1e-4, 1e-3, 0.1, 1.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(F.softplus(inverse_softplus(x)), x)
    assert abs(float(inverse_softplus(torch.tensor(1.0))) - math.log(math.e - 1)) < 1e-6


def test_default_mamba1_matches_mamba_ssm_recipe():
    torch.manual_seed(0)
    layer = Mamba(d_model=64, d_state=16)
    assert layer.dt_rank == 4 and layer.d_inner == 128
    torch.testing.assert_close(layer.A_log, torch.log(torch.arange(1, 17.0)).expand(128, 16))
    assert torch.all(layer.D == 1)
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    # log-uniform: the median of log dt sits near the middle of [log 1e-3, log 1e-1]
    assert abs(dt.log().median().item() - math.log(1e-2)) < 0.6
    bound = layer.dt_rank ** -0.5
    assert layer.dt_proj.weight.abs().max() <= bound


def test_default_mamba2_matches_mamba_ssm_recipe():
    torch.manual_seed(0)
    layer = Mamba2(d_model=128, d_state=32, headdim=32)
    A = torch.exp(layer.A_log)
    assert layer.nheads == 8 and A.min() >= 1 and A.max() <= 16
    dt = F.softplus(layer.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert torch.all(layer.D == 1) and torch.all(layer.norm.weight == 1)


def test_model_level_init_rescales_out_proj_and_keeps_dt_bias():
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=64, n_layer=4, vocab_size=50, ssm_cfg={"layer": "Mamba1"})
    model = MambaLM(cfg)
    out_w = model.backbone.layers[0].mixer.out_proj.weight
    # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in), then / sqrt(n_layer)
    assert out_w.abs().max() <= 1 / math.sqrt(128) / math.sqrt(4) + 1e-7
    assert out_w.abs().max() > 0.8 / math.sqrt(128) / math.sqrt(4)
    dt = F.softplus(model.backbone.layers[0].mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4)  # not zeroed by the bias reset
    assert abs(model.backbone.embedding.weight.std().item() - 0.02) < 0.003


def _b_c_rows_mamba1(layer):
    N = layer.d_state
    w = layer.x_proj.weight
    return w[layer.dt_rank:layer.dt_rank + N], w[layer.dt_rank + N:]


def _b_c_rows_mamba2(layer):
    GN = layer.ngroups * layer.d_state
    w = layer.in_proj.weight
    c_end = w.shape[0] - layer.nheads
    return w[c_end - 2 * GN:c_end - GN], w[c_end - GN:c_end]


def test_mimetic_mamba1_decay_and_tied_bc():
    torch.manual_seed(0)
    layer = mimetic_init_(Mamba(d_model=32, d_state=8))
    assert torch.all(layer.A_log == -8.0)
    torch.testing.assert_close(F.softplus(layer.dt_proj.bias), torch.ones(64))
    Wb, Wc = _b_c_rows_mamba1(layer)
    assert torch.equal(Wb, Wc)
    # decay per step exp(delta * A) with delta ~ 1 and A = -exp(-8): ~1 - 3.4e-4
    A = -torch.exp(layer.A_log)
    assert torch.all(torch.exp(1.5 * A) > 0.999)


def test_mimetic_mamba2_decay_and_tied_bc_per_group():
    torch.manual_seed(0)
    layer = mimetic_init_(Mamba2(d_model=64, d_state=16, headdim=16, ngroups=2))
    assert torch.all(layer.A_log == -8.0)
    torch.testing.assert_close(F.softplus(layer.dt_bias), torch.ones(layer.nheads))
    Wb, Wc = _b_c_rows_mamba2(layer)
    assert Wb.shape == (32, 64) and torch.equal(Wb, Wc)
    # z, x and dt rows are untouched: compare with a default layer from the same seed
    torch.manual_seed(0)
    ref = Mamba2(d_model=64, d_state=16, headdim=16, ngroups=2)
    GN2 = 2 * layer.ngroups * layer.d_state
    untouched = slice(0, 2 * layer.d_inner)
    assert torch.equal(layer.in_proj.weight[untouched], ref.in_proj.weight[untouched])
    assert torch.equal(layer.in_proj.weight[-layer.nheads:], ref.in_proj.weight[-layer.nheads:])
    assert GN2 == 64


def implicit_scores(layer, x):
    """C_t . B_s for Mamba-1 from conv-free inputs x (L, d_inner): (L, L)."""
    _, B, C = layer.x_proj(x).split([layer.dt_rank, layer.d_state, layer.d_state], dim=-1)
    return C @ B.t()


def test_mimetic_scores_attend_to_similar_tokens():
    """With W_C = W_B, C_t . B_s = x_t^T W^T W x_s: a PSD Gram matrix whose diagonal (a
    token attending to itself) dominates, as with W_Q W_K^T ~ I; default init has no such
    structure."""
    torch.manual_seed(0)
    x = torch.randn(48, 128)
    mim = mimetic_init_(Mamba(d_model=64, d_state=32))
    scores = implicit_scores(mim, x).detach()
    torch.testing.assert_close(scores, scores.t(), rtol=1e-4, atol=1e-4)
    assert torch.linalg.eigvalsh(scores).min() > -1e-3
    off = scores[~torch.eye(48, dtype=torch.bool)]
    assert scores.diagonal().min() > 0
    assert scores.diagonal().mean() > 4 * off.abs().mean()
    torch.manual_seed(0)
    dflt = Mamba(d_model=64, d_state=32)
    s_def = implicit_scores(dflt, x).detach()
    off_def = s_def[~torch.eye(48, dtype=torch.bool)]
    assert s_def.diagonal().mean() < 2 * off_def.abs().mean()


def test_mimetic_ablations_switch_components_off():
    torch.manual_seed(0)
    ref = Mamba(d_model=32, d_state=8)
    torch.manual_seed(0)
    no_decay = mimetic_init_(Mamba(d_model=32, d_state=8), decay=False)
    assert torch.equal(no_decay.A_log, ref.A_log) and torch.equal(no_decay.dt_proj.bias, ref.dt_proj.bias)
    Wb, Wc = _b_c_rows_mamba1(no_decay)
    assert torch.equal(Wb, Wc)
    torch.manual_seed(0)
    no_tie = mimetic_init_(Mamba(d_model=32, d_state=8), tie_bc=False)
    assert torch.equal(no_tie.x_proj.weight, ref.x_proj.weight)
    assert torch.all(no_tie.A_log == -8.0)


def test_mimetic_knobs_noise_scale_conv_identity():
    torch.manual_seed(0)
    layer = mimetic_init_(Mamba(d_model=32, d_state=8), bc_noise=0.1, a_log=-6.0, dt=0.5,
                          conv_identity=True)
    Wb, Wc = _b_c_rows_mamba1(layer)
    rel = (Wc - Wb).std() / Wb.std()
    assert 0.05 < rel < 0.2
    assert torch.all(layer.A_log == -6.0)
    torch.testing.assert_close(F.softplus(layer.dt_proj.bias), torch.full((64,), 0.5))
    assert torch.all(layer.conv1d.weight[:, 0, -1] == 1) and torch.all(layer.conv1d.weight[:, 0, :-1] == 0)
    assert torch.all(layer.conv1d.bias == 0)
    with pytest.raises(ValueError):
        MimeticConfig(dt=0)


def test_mimetic_on_foreign_module_with_mamba_ssm_names():
    """Any module with mamba_ssm parameter names is recognized (e.g. transformers' mixers)."""

    class ForeignMamba2(nn.Module):
        def __init__(self):
            super().__init__()
            self.n_groups, self.ssm_state_size = 1, 4
            self.in_proj = nn.Linear(8, 2 * 16 + 2 * 4 + 2)
            self.conv1d = nn.Conv1d(24, 24, 4, groups=24)
            self.dt_bias = nn.Parameter(torch.zeros(2))
            self.A_log = nn.Parameter(torch.zeros(2))
            self.out_proj = nn.Linear(16, 8)

    m = mimetic_init_(nn.Sequential(ForeignMamba2()))[0]
    w = m.in_proj.weight
    assert torch.equal(w[32:36], w[36:40]) and torch.all(m.A_log == -8)


def test_mimetic_rejects_module_without_mamba_layers():
    with pytest.raises(ValueError, match="no Mamba layer"):
        mimetic_init_(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="either config or keyword"):
        mimetic_init_(Mamba(8), MimeticConfig(), decay=False)


def test_config_init_mimetic_applies_and_default_is_untouched():
    base = dict(d_model=32, n_layer=2, vocab_size=20, ssm_cfg={"layer": "Mamba2", "headdim": 16, "d_state": 8})
    torch.manual_seed(0)
    default = MambaLM(MambaConfig(**base))
    torch.manual_seed(0)
    mimetic = MambaLM(MambaConfig(**base, init="mimetic", init_cfg={"a_log": -7.0}))
    for d, m in zip(default.backbone.layers, mimetic.backbone.layers):
        assert torch.all(m.mixer.A_log == -7.0)
        assert not torch.all(d.mixer.A_log == -7.0)
        assert torch.equal(d.mixer.out_proj.weight, m.mixer.out_proj.weight)
