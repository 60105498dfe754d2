"""Checkpoints: our format, mamba_ssm's and transformers' (Mamba / Mamba2 ForCausalLM).

Loading must reproduce the model exactly (same logits), and every kind of broken
checkpoint must fail with an error that names the problem.
"""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mimetic import MambaConfig, MambaLM

VOCAB = 100


def tiny_config(layer="Mamba1", attn=(), **kw):
    ssm = {"layer": layer, "d_state": 8}
    if layer == "Mamba2":
        ssm.update(headdim=16, ngroups=2, chunk_size=8)
    attn_cfg = {"num_heads": 2, "rotary_emb_dim": 8} if attn else {}
    return MambaConfig(d_model=32, n_layer=3, vocab_size=VOCAB, ssm_cfg=ssm,
                       attn_layer_idx=list(attn), attn_cfg=attn_cfg, **kw)


def perturb_(model, scale=0.2, seed=0):
    """Add noise to every parameter (norm weights, D, A_log, biases included), so that a
    tensor loaded into the wrong place or left at its init value changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def random_ids(batch=2, length=37, seed=0):
    # length 37 with chunk_size 8: several chunks and a padded last one for Mamba-2.
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---- (a) our format ---------------------------------------------------------------------

ROUND_TRIP_CASES = {
    "mamba1": dict(layer="Mamba1"),
    "mamba2": dict(layer="Mamba2"),
    "hybrid_attention_mlp": dict(layer="Mamba2", attn=(1,), d_intermediate=48),
    "mamba1_untied_layernorm": dict(layer="Mamba1", tie_embeddings=False, rms_norm=False),
    "mamba1_mimetic": dict(layer="Mamba1", init="mimetic"),
}


@pytest.mark.parametrize("case", ROUND_TRIP_CASES)
def test_own_format_round_trip(tmp_path, case):
    torch.manual_seed(0)
    model = perturb_(MambaLM(tiny_config(**ROUND_TRIP_CASES[case]))).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["format"] == "mimetic"
    if model.config.tie_embeddings:  # the tied head is stored once
        assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))

    loaded = MambaLM.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    tied = loaded.lm_head.weight is loaded.backbone.embedding.weight
    assert tied == model.config.tie_embeddings
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    ids = random_ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_own_format_load_in_bfloat16(tmp_path):
    model = perturb_(MambaLM(tiny_config("Mamba2"))).eval()
    model.save_pretrained(tmp_path)
    loaded = MambaLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.backbone.embedding.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.backbone.embedding.weight, model.backbone.embedding.weight.bfloat16())


# ---- (b) mamba_ssm's format ---------------------------------------------------------------

def write_mamba_ssm_checkpoint(model, path):
    """What ``mamba_ssm``'s ``MambaLMHeadModel.save_pretrained`` writes: its MambaConfig
    fields as config.json and the whole state dict (tied head included) as a .bin."""
    cfg = model.config
    config = dict(d_model=cfg.d_model, d_intermediate=cfg.d_intermediate, n_layer=cfg.n_layer,
                  vocab_size=cfg.vocab_size, ssm_cfg=cfg.ssm_cfg, attn_layer_idx=cfg.attn_layer_idx,
                  attn_cfg=cfg.attn_cfg, rms_norm=cfg.rms_norm,
                  residual_in_fp32=cfg.residual_in_fp32, fused_add_norm=True,
                  pad_vocab_size_multiple=cfg.pad_vocab_size_multiple,
                  tie_embeddings=cfg.tie_embeddings)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), path / "pytorch_model.bin")


@pytest.mark.parametrize("case", ["mamba1", "mamba2", "hybrid_attention_mlp"])
def test_mamba_ssm_format(tmp_path, case):
    model = perturb_(MambaLM(tiny_config(**ROUND_TRIP_CASES[case]))).eval()
    write_mamba_ssm_checkpoint(model, tmp_path)
    loaded = MambaLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight
    ids = random_ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


# ---- (c) transformers ---------------------------------------------------------------------

HF_MAMBA1_CASES = {
    "default": dict(),
    # Every option we map, away from its default.
    "options": dict(tie_word_embeddings=False, use_bias=True, use_conv_bias=False,
                    residual_in_fp32=False, time_step_rank=5, expand=3, conv_kernel=3),
}
HF_MAMBA2_CASES = {
    "default": dict(),
    "options": dict(tie_word_embeddings=True, use_bias=True, use_conv_bias=False,
                    residual_in_fp32=False, n_groups=4, conv_kernel=3),
    # dt is clamped after the softplus; the tight upper limit is hit by most tokens.
    "time_step_limit": dict(time_step_limit=(0.0, 0.05)),
}


def make_hf_mamba(transformers, **overrides):
    kw = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=8,
              pad_token_id=0, eos_token_id=0, bos_token_id=0)
    kw.update(overrides)
    torch.manual_seed(0)
    return perturb_(transformers.MambaForCausalLM(transformers.MambaConfig(**kw))).eval()


def make_hf_mamba2(transformers, **overrides):
    # d_inner = 2 * 32 = 64 = num_heads * head_dim; chunk 8 so that length 37 spans chunks.
    kw = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=16,
              num_heads=4, head_dim=16, n_groups=2, chunk_size=8,
              pad_token_id=0, eos_token_id=0, bos_token_id=0)
    kw.update(overrides)
    torch.manual_seed(0)
    return perturb_(transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**kw))).eval()


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


def skip_if_ungrouped_gated_norm(transformers, theirs):
    """transformers before 5.23 normalizes Mamba2's gated RMSNorm over all of d_inner
    (its MambaRMSNormGated has no group_size) instead of per group of d_inner // n_groups
    as mamba_ssm does, so its logits are wrong whenever n_groups > 1; ours follow mamba_ssm."""
    from packaging.version import Version

    if theirs.config.n_groups > 1 and Version(transformers.__version__) < Version("5.23"):
        pytest.skip(f"transformers {transformers.__version__} < 5.23: Mamba2 gated RMSNorm "
                    "ignores n_groups (normalizes over all of d_inner, not per group)")


def assert_same_logits(ours, theirs, ids):
    with torch.no_grad():
        expected = theirs(ids, use_cache=False).logits
        got = ours(ids)
    assert got.shape == expected.shape == (*ids.shape, VOCAB)
    # fp32, same math in a different order (chunked scans vs sequential loops).
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def assert_same_greedy_generation(ours, theirs, ids, n=6):
    # Both stop a sequence at eos id 0 and pad it with 0 (transformers' pad id) afterwards.
    expected = theirs.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                               do_sample=False, eos_token_id=0, pad_token_id=0)
    got = ours.generate(ids, max_new_tokens=n, eos_token_id=0)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("case", HF_MAMBA1_CASES)
def test_transformers_mamba(tmp_path, transformers, case):
    theirs = make_hf_mamba(transformers, **HF_MAMBA1_CASES[case])
    theirs.save_pretrained(tmp_path)
    ours = MambaLM.from_pretrained(tmp_path).eval()
    assert ours.config.layer_type == "Mamba1"
    assert ours.config.tie_embeddings == theirs.config.tie_word_embeddings
    assert_same_logits(ours, theirs, random_ids())
    assert_same_greedy_generation(ours, theirs, random_ids(length=9, seed=1))


@pytest.mark.parametrize("case", HF_MAMBA2_CASES)
def test_transformers_mamba2(tmp_path, transformers, case):
    theirs = make_hf_mamba2(transformers, **HF_MAMBA2_CASES[case])
    theirs.save_pretrained(tmp_path)
    ours = MambaLM.from_pretrained(tmp_path).eval()
    assert ours.config.layer_type == "Mamba2"
    assert tuple(ours.config.ssm_cfg["dt_limit"]) == tuple(theirs.config.time_step_limit)
    skip_if_ungrouped_gated_norm(transformers, theirs)
    assert_same_logits(ours, theirs, random_ids())
    if case != "time_step_limit":  # transformers' decoding step ignores time_step_limit
        assert_same_greedy_generation(ours, theirs, random_ids(length=9, seed=1))


@pytest.mark.parametrize("layer", ["mamba1", "mamba2"])
def test_transformers_then_own_format(tmp_path, transformers, layer):
    """A converted model saves in our format and loads back unchanged."""
    if layer == "mamba1":
        theirs = make_hf_mamba(transformers)
    else:  # its default time_step_limit (0, inf) must survive our JSON config
        theirs = make_hf_mamba2(transformers)
    theirs.save_pretrained(tmp_path / "hf")
    ours = MambaLM.from_pretrained(tmp_path / "hf").eval()
    ours.save_pretrained(tmp_path / "ours")
    again = MambaLM.from_pretrained(tmp_path / "ours").eval()
    assert again.config == ours.config
    ids = random_ids()
    with torch.no_grad():
        assert torch.equal(again(ids), ours(ids))


def test_transformers_sharded_safetensors(tmp_path, transformers):
    theirs = make_hf_mamba2(transformers)
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    skip_if_ungrouped_gated_norm(transformers, theirs)
    assert_same_logits(MambaLM.from_pretrained(tmp_path).eval(), theirs, random_ids())


def test_transformers_pytorch_model_bin(tmp_path, transformers):
    """Older transformers checkpoints store a pickled state dict (read weights_only)."""
    theirs = make_hf_mamba(transformers)
    theirs.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert_same_logits(MambaLM.from_pretrained(tmp_path).eval(), theirs, random_ids())


def test_transformers_legacy_mamba_config_fields(tmp_path, transformers):
    """Configs like state-spaces/mamba-130m-hf also carry mamba_ssm's names; they agree
    with the transformers fields and the file stores the tied head as well."""
    theirs = make_hf_mamba(transformers)
    theirs.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(d_model=32, n_layer=2, rms_norm=True, fused_add_norm=True, ssm_cfg={},
                  pad_vocab_size_multiple=8, torch_dtype="float32")
    (tmp_path / "config.json").write_text(json.dumps(config))
    state = load_file(str(tmp_path / "model.safetensors"))
    state["lm_head.weight"] = state["backbone.embeddings.weight"].clone()
    save_file(state, str(tmp_path / "model.safetensors"))
    assert_same_logits(MambaLM.from_pretrained(tmp_path).eval(), theirs, random_ids())


# ---- (d) bad input ------------------------------------------------------------------------

def edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def edit_weights(path, fn):
    file = path / "model.safetensors"
    state = load_file(str(file))
    fn(state)
    save_file(state, str(file))


@pytest.fixture
def own_ckpt(tmp_path):
    MambaLM(tiny_config("Mamba1")).save_pretrained(tmp_path)
    return tmp_path


@pytest.fixture
def hf_ckpt(tmp_path, transformers):
    make_hf_mamba2(transformers).save_pretrained(tmp_path)
    return tmp_path


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        MambaLM.from_pretrained(tmp_path / "nope")


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        MambaLM.from_pretrained(tmp_path)


def test_invalid_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        MambaLM.from_pretrained(tmp_path)


def test_unrecognized_format(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_units": 3}))
    with pytest.raises(ValueError, match="unrecognized checkpoint format"):
        MambaLM.from_pretrained(tmp_path)


def test_missing_weights_file_own(own_ckpt):
    (own_ckpt / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        MambaLM.from_pretrained(own_ckpt)


def test_missing_weights_file_mamba_ssm(tmp_path):
    write_mamba_ssm_checkpoint(MambaLM(tiny_config()), tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no pytorch_model.bin"):
        MambaLM.from_pretrained(tmp_path)


def test_missing_weights_file_transformers(hf_ckpt):
    (hf_ckpt / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights in .*model.safetensors"):
        MambaLM.from_pretrained(hf_ckpt)


def test_missing_shard_transformers(tmp_path, transformers):
    make_hf_mamba2(transformers).save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"lists shard '{shard.name}', which is missing"):
        MambaLM.from_pretrained(tmp_path)


def test_unknown_field_own(own_ckpt):
    edit_config(own_ckpt, n_experts=4)
    with pytest.raises(ValueError, match=r"unknown MambaConfig fields: \['n_experts'\]"):
        MambaLM.from_pretrained(own_ckpt)


def test_retired_field_own(own_ckpt):
    """Our config.json files written while MambaConfig had fused_add_norm still load (it is
    dropped); a value that is no boolean is refused."""
    edit_config(own_ckpt, fused_add_norm=True)
    assert "fused_add_norm" not in MambaLM.from_pretrained(own_ckpt).config.to_dict()
    edit_config(own_ckpt, fused_add_norm="yes")
    with pytest.raises(ValueError, match="fused_add_norm='yes' must be true or false"):
        MambaLM.from_pretrained(own_ckpt)


def test_unknown_field_transformers(hf_ckpt):
    edit_config(hf_ckpt, use_fancy_scan=True)
    message = r"unknown or unsupported mamba2 config fields \['use_fancy_scan'\]"
    with pytest.raises(ValueError, match=message):
        MambaLM.from_pretrained(hf_ckpt)


def test_contradictory_config_transformers_mamba2(hf_ckpt):
    edit_config(hf_ckpt, num_heads=8)  # 8 * 16 != 2 * 32
    with pytest.raises(ValueError, match=r"contradictory config: num_heads \* head_dim = 8 \* 16"):
        MambaLM.from_pretrained(hf_ckpt)


def test_contradictory_config_transformers_mamba1(tmp_path, transformers):
    make_hf_mamba(transformers).save_pretrained(tmp_path)
    edit_config(tmp_path, intermediate_size=48)
    with pytest.raises(ValueError, match="contradictory config: intermediate_size=48 but the "
                                         "other fields imply 64"):
        MambaLM.from_pretrained(tmp_path)


def test_contradictory_legacy_field_transformers(hf_ckpt):
    edit_config(hf_ckpt, d_model=64)  # mamba_ssm's name for hidden_size (32)
    message = "contradictory config: d_model=64 but the other fields imply 32"
    with pytest.raises(ValueError, match=message):
        MambaLM.from_pretrained(hf_ckpt)


def test_contradictory_config_own(own_ckpt):
    edit_config(own_ckpt, attn_layer_idx=[5])  # n_layer is 3
    with pytest.raises(ValueError, match=r"attn_layer_idx \[5\] out of range for n_layer=3"):
        MambaLM.from_pretrained(own_ckpt)


@pytest.mark.parametrize("field,value,message", [
    ("layer_norm_epsilon", 1e-6, "layer_norm_epsilon=1e-06 is not supported"),
    ("hidden_act", "gelu", "hidden_act='gelu' is not supported"),
    ("rms_norm", False, "rms_norm=False is not supported"),
    ("hidden_size", "32", "field 'hidden_size' must be int, got '32'"),
    ("time_step_limit", [0.1, 0.0], "time_step_limit must be"),
])
def test_unsupported_config_values_transformers(hf_ckpt, field, value, message):
    edit_config(hf_ckpt, **{field: value})
    with pytest.raises(ValueError, match=message):
        MambaLM.from_pretrained(hf_ckpt)


def test_wrong_shape_own(own_ckpt):
    name = "backbone.layers.1.mixer.x_proj.weight"
    edit_weights(own_ckpt, lambda s: s.update({name: torch.zeros(3, 64)}))
    message = rf"{name} has shape \(3, 64\), the config expects \(\d+, 64\)"
    with pytest.raises(ValueError, match=message):
        MambaLM.from_pretrained(own_ckpt)


def test_wrong_shape_transformers(hf_ckpt):
    name = "backbone.layers.0.mixer.in_proj.weight"
    edit_weights(hf_ckpt, lambda s: s.update({name: torch.zeros(7, 32)}))
    with pytest.raises(ValueError, match=rf"{name} has shape \(7, 32\)"):
        MambaLM.from_pretrained(hf_ckpt)


def test_missing_tensor_own(own_ckpt):
    edit_weights(own_ckpt, lambda s: s.pop("backbone.layers.2.mixer.D"))
    with pytest.raises(ValueError, match=r"missing \['backbone.layers.2.mixer.D'\]"):
        MambaLM.from_pretrained(own_ckpt)


def test_missing_tensor_transformers(hf_ckpt):
    edit_weights(hf_ckpt, lambda s: s.pop("backbone.layers.1.mixer.dt_bias"))
    with pytest.raises(ValueError, match=r"missing \['backbone.layers.1.mixer.dt_bias'\]"):
        MambaLM.from_pretrained(hf_ckpt)


def test_untied_head_missing_transformers(hf_ckpt):
    # transformers' Mamba2 does not tie the head by default, so the file must hold it.
    edit_weights(hf_ckpt, lambda s: s.pop("lm_head.weight"))
    with pytest.raises(ValueError, match=r"missing \['lm_head.weight'\]"):
        MambaLM.from_pretrained(hf_ckpt)


def test_unexpected_tensor_transformers(hf_ckpt):
    edit_weights(hf_ckpt, lambda s: s.update({"backbone.layers.2.norm.weight": torch.ones(32)}))
    with pytest.raises(ValueError, match=r"unexpected \['backbone.layers.2.norm.weight'\]"):
        MambaLM.from_pretrained(hf_ckpt)


def test_tied_head_that_differs_transformers(hf_ckpt):
    edit_config(hf_ckpt, tie_word_embeddings=True)  # but lm_head.weight is its own tensor
    with pytest.raises(ValueError, match="tie_word_embeddings is true but lm_head.weight differs"):
        MambaLM.from_pretrained(hf_ckpt)
