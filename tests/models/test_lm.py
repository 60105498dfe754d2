"""MambaLM: forward shapes, decoding equals the parallel forward, generation, config errors."""
import pytest
import torch

from mimetic import MambaConfig, MambaLM
from mimetic.models.generation import sample_next

VOCAB = 37


def tiny_config(layer="Mamba1", init="default", attn=(), **kw):
    ssm = {"layer": layer, "d_state": 8}
    if layer == "Mamba2":
        ssm.update(headdim=16, chunk_size=8)
    attn_cfg = {"num_heads": 2, "rotary_emb_dim": 8} if attn else {}
    return MambaConfig(d_model=32, n_layer=3, vocab_size=VOCAB, ssm_cfg=ssm, init=init,
                       attn_layer_idx=list(attn), attn_cfg=attn_cfg, **kw)


CASES = [
    ("Mamba1", "default", ()),
    ("Mamba1", "mimetic", (1,)),
    ("Mamba2", "default", (2,)),
    ("Mamba2", "mimetic", ()),
]


@pytest.mark.parametrize("layer,init,attn", CASES)
def test_forward_shape_and_vocab_cut(layer, init, attn):
    torch.manual_seed(0)
    model = MambaLM(tiny_config(layer, init, attn))
    assert model.config.padded_vocab_size == 40
    ids = torch.randint(0, VOCAB, (2, 13))
    logits = model(ids)
    assert logits.shape == (2, 13, VOCAB)
    assert torch.isfinite(logits).all()
    assert model(ids, num_last_tokens=1).shape == (2, 1, VOCAB)
    torch.testing.assert_close(model(ids, num_last_tokens=1)[:, 0], logits[:, -1])


@pytest.mark.parametrize("layer,init,attn", CASES)
@pytest.mark.parametrize("prefill", [0, 1, 6])
def test_step_by_step_matches_forward(layer, init, attn, prefill):
    """Prefill `prefill` tokens with the parallel path, then step: same logits."""
    torch.manual_seed(1)
    model = MambaLM(tiny_config(layer, init, attn)).eval()
    ids = torch.randint(0, VOCAB, (3, 19))
    full = model(ids)
    cache = model.allocate_cache(3, 19)
    pieces = [model(ids[:, :prefill], cache=cache)] if prefill else []
    pieces += [model.step(ids[:, t:t + 1], cache) for t in range(prefill, 19)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)
    assert cache.seqlen_offset == 19


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_half_precision_states_follow_the_forward(layer):
    """SSM states kept in bfloat16 (state_dtype) stay bfloat16 through prefill and steps,
    and the logits follow the float32 forward to bfloat16 accuracy."""
    torch.manual_seed(4)
    model = MambaLM(tiny_config(layer)).eval()
    ids = torch.randint(0, VOCAB, (2, 15))
    cache = model.allocate_cache(2, 15, state_dtype=torch.bfloat16)
    with torch.no_grad():
        full = model(ids)
        pieces = [model(ids[:, :5], cache=cache)]
        pieces += [model.step(ids[:, t:t + 1], cache) for t in range(5, 15)]
    assert all(s.ssm_state.dtype == torch.bfloat16 for s in cache.layers)
    got = torch.cat(pieces, dim=1)
    assert (got - full).norm() / full.norm() < 2e-2
    out = model.generate(ids[:, :4], max_new_tokens=3, state_dtype=torch.bfloat16)
    assert out.shape == (2, 7)


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_layer_with_mlp_and_layernorm(layer):
    model = MambaLM(tiny_config(layer, d_intermediate=48, rms_norm=False, residual_in_fp32=False))
    ids = torch.randint(0, VOCAB, (2, 9))
    cache = model.allocate_cache(2, 9)
    stepped = torch.cat([model.step(ids[:, t:t + 1], cache) for t in range(9)], dim=1)
    torch.testing.assert_close(stepped, model(ids), rtol=1e-4, atol=1e-4)


def greedy_by_hand(model, ids, n):
    for _ in range(n):
        nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@pytest.mark.parametrize("layer,init,attn", CASES[:3])
def test_generate_greedy_matches_full_forward_loop(layer, init, attn):
    torch.manual_seed(2)
    model = MambaLM(tiny_config(layer, init, attn)).eval()
    prompt = torch.randint(0, VOCAB, (2, 5))
    out = model.generate(prompt, max_new_tokens=7)
    assert out.shape == (2, 12)
    assert torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        assert torch.equal(out, greedy_by_hand(model, prompt, 7))


def test_generate_stops_at_eos_and_pads():
    torch.manual_seed(3)
    model = MambaLM(tiny_config()).eval()
    prompt = torch.randint(0, VOCAB, (1, 4))
    first = model.generate(prompt, max_new_tokens=1)[0, -1].item()
    out = model.generate(prompt, max_new_tokens=10, eos_token_id=first)
    assert out.shape == (1, 5) and out[0, -1].item() == first


def test_generate_sampling_is_seeded_and_in_vocab():
    model = MambaLM(tiny_config()).eval()
    prompt = torch.randint(0, VOCAB, (4, 3))
    a = model.generate(prompt, 6, temperature=0.8, top_k=0, top_p=0.9,
                       generator=torch.Generator().manual_seed(5))
    b = model.generate(prompt, 6, temperature=0.8, top_k=0, top_p=0.9,
                       generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() < VOCAB


def test_sample_next_top_k_and_top_p_restrict_support():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0, -2.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    top2 = sample_next(logits, top_k=2, generator=g)
    assert set(top2.tolist()) == {0, 1}
    # p(0) ~ 0.72, p(0)+p(1) ~ 0.99: nucleus 0.5 keeps only token 0
    assert set(sample_next(logits, top_k=0, top_p=0.5, generator=g).tolist()) == {0}
    assert torch.equal(sample_next(logits[:1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, top_k=0, top_p=1.5)


def test_bad_inputs_raise_clear_errors():
    model = MambaLM(tiny_config())
    with pytest.raises(ValueError, match="token ids must lie in"):
        model(torch.tensor([[0, VOCAB]]))
    with pytest.raises(ValueError, match="shape \\(batch, length\\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 5))
    cache = model.allocate_cache(2, 3)
    with pytest.raises(ValueError, match="allocated for batch 2"):
        model.step(torch.zeros(1, 1, dtype=torch.long), cache)
    for _ in range(3):
        model.step(torch.zeros(2, 1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="cache is full"):
        model.step(torch.zeros(2, 1, dtype=torch.long), cache)


@pytest.mark.parametrize("kwargs,match", [
    (dict(ssm_cfg={"layer": "Mamba3"}), "ssm_cfg\\['layer'\\]"),
    (dict(ssm_cfg={"layer": "Mamba1", "d_sate": 4}), "unknown ssm_cfg keys"),
    (dict(attn_layer_idx=[5], attn_cfg={"num_heads": 2}), "out of range"),
    (dict(attn_layer_idx=[0]), "num_heads"),
    (dict(init="fancy"), "init must be one of"),
    (dict(init="mimetic", init_cfg={"decay_rate": 1}), "unknown init_cfg keys"),
    (dict(init_cfg={"decay": False}), "init is not 'mimetic'"),
    (dict(d_model=0), "d_model"),
])
def test_config_validation(kwargs, match):
    base = dict(d_model=32, n_layer=2, vocab_size=10)
    with pytest.raises(ValueError, match=match):
        MambaConfig(**{**base, **kwargs})


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown MambaConfig fields: \\['n_layers'\\]"):
        MambaConfig.from_dict({"d_model": 8, "n_layers": 2})


def test_mamba2_headdim_must_divide():
    with pytest.raises(ValueError, match="multiple of headdim"):
        MambaLM(MambaConfig(d_model=24, n_layer=1, vocab_size=10,
                            ssm_cfg={"layer": "Mamba2", "headdim": 32}))


def test_tied_embeddings_share_storage():
    model = MambaLM(tiny_config())
    assert model.lm_head.weight is model.backbone.embedding.weight
    untied = MambaLM(tiny_config(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.backbone.embedding.weight
