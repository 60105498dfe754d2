"""C_t . B_s separation: the oracle for whether mimetic init's B/C tie acts."""
import pytest
import torch

from mimetic import MambaConfig, MambaLM
from mimetic.analysis import bc_scores, bc_separation, mixer_inputs, scan_inputs, separation


def _model(layer: str, init: str, init_cfg=None, seed: int = 0) -> MambaLM:
    torch.manual_seed(seed)
    ssm = {"layer": layer, "d_state": 32, **({"headdim": 32} if layer == "Mamba2" else {})}
    return MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=16, ssm_cfg=ssm, init=init,
                               init_cfg=init_cfg or {}))


IDS = torch.randint(0, 16, (4, 96), generator=torch.Generator().manual_seed(1))


def _first_layer(layer, init, init_cfg=None):
    """Layer 0's separation, averaged over 3 model seeds."""
    return sum(bc_separation(_model(layer, init, init_cfg, s), IDS, layers=0)[0] for s in range(3)) / 3


def test_separation_of_known_scores():
    ids = torch.tensor([[0, 1, 0, 1, 2]])
    same = (ids[:, :, None] == ids[:, None, :]).float()[:, None]
    scores = same * 3.0 + torch.randn(1, 1, 5, 5, generator=torch.Generator().manual_seed(0)) * 1e-3
    assert separation(scores, ids) > 100
    assert separation(-scores, ids) < -100
    with pytest.raises(ValueError, match="scores must be"):
        separation(scores[:, :, :4], ids)


def test_bc_scores_match_scan_inputs():
    m = _model("Mamba2", "mimetic")
    x = mixer_inputs(m, IDS, [0])[0]
    s = scan_inputs(m.backbone.layers[0].mixer, x)
    scores = bc_scores(m.backbone.layers[0].mixer, x)
    torch.testing.assert_close(scores[1, 0, 7, 3], (s["C"][1, 7, 0] * s["B"][1, 3, 0]).sum())


def test_mamba1_rows_tie_separates_same_tokens():
    assert abs(_first_layer("Mamba1", "default")) < 0.2
    assert _first_layer("Mamba1", "mimetic") > 0.4


def test_mamba2_rows_tie_alone_is_inert_and_the_conv_tie_makes_it_act():
    """The digest's caveat: B and C pass through different conv taps in Mamba-2."""
    assert abs(_first_layer("Mamba2", "default")) < 0.2
    rows_only = _first_layer("Mamba2", "mimetic", {"tie_conv": False})
    with_conv = _first_layer("Mamba2", "mimetic", {"tie_conv": True})
    assert abs(rows_only) < 0.2
    assert with_conv > 0.4 and with_conv > 3 * abs(rows_only)
    assert _first_layer("Mamba2", "mimetic", {"conv_identity": True}) > 3


def test_nearly_equal_forms_keep_most_of_the_separation():
    full = _first_layer("Mamba2", "mimetic", {"tie_conv": True})
    for knobs in ({"bc_noise": 0.5}, {"bc_alpha": 0.5}):
        part = _first_layer("Mamba2", "mimetic", {"tie_conv": True, **knobs})
        assert 0.5 * full < part < full


def test_bc_separation_skips_attention_and_needs_an_ssm_layer():
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=32, n_layer=2, vocab_size=16, ssm_cfg={"layer": "Mamba1", "d_state": 8},
                      attn_layer_idx=[1], attn_cfg={"num_heads": 2})
    m = MambaLM(cfg)
    assert list(bc_separation(m, IDS[:, :20])) == [0]
    with pytest.raises(ValueError, match="no Mamba"):
        bc_separation(m, IDS[:, :20], layers=1)
