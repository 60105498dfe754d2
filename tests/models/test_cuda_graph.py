"""CUDA-graph decoding (``generate(cuda_graph=True)``): the same tokens as plain decoding,
and clear errors where it cannot run. The equality tests need a GPU; the errors do not."""
import pytest
import torch

from mimetic import MambaConfig, MambaLM
from mimetic.models.cuda_graph import DecodeGraph, decode_graph

VOCAB = 37
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def config(layer="Mamba1", attn=(), **kw):
    ssm = {"layer": layer, "d_state": 16}
    if layer == "Mamba2":
        ssm.update(headdim=16, chunk_size=8, ngroups=2)
    attn_cfg = {"num_heads": 2, "rotary_emb_dim": 8} if attn else {}
    return MambaConfig(d_model=64, n_layer=3, vocab_size=VOCAB, ssm_cfg=ssm,
                       attn_layer_idx=list(attn), attn_cfg=attn_cfg, **kw)


def test_cpu_model_is_an_error():
    model = MambaLM(config())
    with pytest.raises(ValueError, match="CUDA device"):
        model.generate(torch.randint(0, VOCAB, (1, 3)), 4, cuda_graph=True)


def test_attention_layers_are_an_error():
    model = MambaLM(config(attn=(1,)))
    with pytest.raises(ValueError, match=r"attention layers \(layers \[1\]\)"):
        model.generate(torch.randint(0, VOCAB, (1, 3)), 4, cuda_graph=True)


@cuda
@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_graph_generate_equals_plain_generate(layer, batch, dtype):
    torch.manual_seed(0)
    model = MambaLM(config(layer), device="cuda", dtype=dtype).eval()
    prompt = torch.randint(0, VOCAB, (batch, 5), device="cuda")
    plain = model.generate(prompt, 20)
    graphed = model.generate(prompt, 20, cuda_graph=True)
    assert torch.equal(graphed, plain)
    # A second call reuses the captured graph (same batch) and still agrees.
    graph = decode_graph(model, batch)
    other = torch.randint(0, VOCAB, (batch, 7), device="cuda")
    assert torch.equal(model.generate(other, 12, cuda_graph=True), model.generate(other, 12))
    assert decode_graph(model, batch) is graph


@cuda
@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_graph_step_equals_model_step(layer):
    """Logits and states of graph replays == model.step, token by token, and the capture
    leaves the cache's values as they were."""
    torch.manual_seed(1)
    model = MambaLM(config(layer), device="cuda").eval()
    ids = torch.randint(0, VOCAB, (2, 9), device="cuda")
    with torch.inference_mode():
        ref_cache, cache = model.allocate_cache(2, 9), model.allocate_cache(2, 9)
        model(ids[:, :4], cache=ref_cache)
        model(ids[:, :4], cache=cache)
        before = [s.ssm_state.clone() for s in cache.layers]
        graph = DecodeGraph(model, cache)
        for b, s in zip(before, cache.layers):
            assert torch.equal(b, s.ssm_state)
        for t in range(4, 9):
            want = model.step(ids[:, t:t + 1], ref_cache)
            got = graph(ids[:, t:t + 1])
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for a, b in zip(cache.layers, ref_cache.layers):
            torch.testing.assert_close(a.ssm_state, b.ssm_state, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(a.conv_state, b.conv_state, rtol=1e-5, atol=1e-5)
        assert cache.seqlen_offset == 9
        with pytest.raises(ValueError, match="cache is full"):
            graph(ids[:, :1])
        # A prefill into the graph's cache replaces its tensors: refused, not wrong.
        graph.cache.max_seqlen, graph.cache.seqlen_offset = 100, 0
        for s in graph.cache.layers:
            s.seqlen_offset = 0
        model(ids[:, :3], cache=graph.cache)
        with pytest.raises(RuntimeError, match="replaced"):
            graph(ids[:, :1])


@cuda
def test_new_weights_recapture():
    model = MambaLM(config(), device="cuda").eval()
    prompt = torch.randint(0, VOCAB, (1, 4), device="cuda")
    model.generate(prompt, 5, cuda_graph=True)
    first = decode_graph(model, 1)
    model.half()
    assert decode_graph(model, 1) is not first
    assert torch.equal(model.generate(prompt, 8, cuda_graph=True), model.generate(prompt, 8))
