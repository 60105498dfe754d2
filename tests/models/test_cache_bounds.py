"""A cache holds what ``allocate_cache`` promised and no more (issue 14): a prefill or step
past ``max_seqlen`` is refused for every layer type (Mamba layers have a fixed-size state and
used to accept any length silently), as are a cache of another batch or model."""
import pytest
import torch

from mimetic import MambaConfig, MambaLM

LAYERS = {
    "mamba1": dict(ssm_cfg={"layer": "Mamba1", "d_state": 4}),
    "mamba2": dict(ssm_cfg={"layer": "Mamba2", "d_state": 4, "headdim": 8}),
    "attention": dict(attn_layer_idx=[0], attn_cfg={"num_heads": 2}),
}


def model(kind, n_layer=1):
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=n_layer, vocab_size=8, **LAYERS[kind])).eval()


@pytest.mark.parametrize("kind", list(LAYERS))
def test_prefill_longer_than_the_cache_is_refused(kind):
    m = model(kind)
    cache = m.allocate_cache(2, 4)
    with torch.no_grad(), pytest.raises(ValueError, match=r"cache holds 4 tokens: 0 consumed, 5 more do not fit"):
        m(torch.zeros(2, 5, dtype=torch.long), cache=cache)
    assert cache.seqlen_offset == 0


@pytest.mark.parametrize("kind", list(LAYERS))
def test_prefill_that_fits_exactly_then_a_step_is_refused(kind):
    m = model(kind)
    cache = m.allocate_cache(1, 3)
    with torch.no_grad():
        m(torch.zeros(1, 3, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match=r"cache is full|3 consumed, 1 more do not fit"):
            m.step(torch.zeros(1, 1, dtype=torch.long), cache)
        with pytest.raises(ValueError, match=r"3 consumed, 1 more do not fit"):
            m(torch.zeros(1, 1, dtype=torch.long), cache=cache)  # forward on a warm cache, too


def test_prefill_and_steps_within_the_cache_match_the_full_forward():
    m = model("mamba2")
    ids = torch.randint(0, 8, (2, 6))
    cache = m.allocate_cache(2, 6)
    with torch.no_grad():
        full = m(ids)
        first = m(ids[:, :4], cache=cache)
        steps = [m.step(ids[:, t:t + 1], cache) for t in (4, 5)]
    torch.testing.assert_close(first, full[:, :4])
    torch.testing.assert_close(torch.cat(steps, 1), full[:, 4:], rtol=1e-4, atol=1e-4)


def test_cache_of_another_batch_or_model_is_refused():
    m = model("mamba1")
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"allocated for batch 2, got 3"):
            m(torch.zeros(3, 2, dtype=torch.long), cache=m.allocate_cache(2, 8))
        with pytest.raises(ValueError, match=r"cache holds 2 layers, the model has 1"):
            m(torch.zeros(1, 2, dtype=torch.long), cache=model("mamba1", n_layer=2).allocate_cache(1, 8))
        with pytest.raises(TypeError, match=r"cache must be an InferenceCache"):
            m(torch.zeros(1, 2, dtype=torch.long), cache={"layers": []})


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("max_seqlen", 0), ("max_seqlen", -3),
                                          ("max_seqlen", 2.5), ("batch_size", True)])
def test_allocate_cache_checks_its_sizes(field, value):
    args = {"batch_size": 1, "max_seqlen": 4, field: value}
    with pytest.raises(ValueError, match=rf"{field} must be a positive int, got {value!r}"):
        model("mamba1").allocate_cache(**args)
