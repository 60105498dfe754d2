"""LinearAttention against the plain quadratic form, and as a MambaLM layer."""
import pytest
import torch
import torch.nn.functional as F

from mimetic import MambaConfig, MambaLM
from mimetic.modules import LinearAttention
from mimetic.modules.linear_attention import feature_map


def quadratic(layer: LinearAttention, u: torch.Tensor) -> torch.Tensor:
    """The oracle: y_t = sum_{s<=t} (phi(q_t) . phi(k_s)) v_s per head, as an explicit masked
    (L, L) product, then the norm and out_proj."""
    q, k, v = layer.qkv(u)                                   # (b, L, g, n), (b, L, h, p)
    rep = layer.nheads // layer.ngroups
    q, k = q.repeat_interleave(rep, dim=2), k.repeat_interleave(rep, dim=2)
    scores = torch.einsum("bthn,bshn->bhts", q, k)
    L = u.shape[1]
    scores = scores.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), 0)
    y = torch.einsum("bhts,bshp->bthp", scores, v)
    return layer._project(y)


@pytest.mark.parametrize("L", [1, 7, 33, 130])
@pytest.mark.parametrize("fmap", ["identity", "elu1", "relu"])
@pytest.mark.parametrize("ngroups", [None, 1])
def test_matches_the_quadratic_form_forward_and_backward(L, fmap, ngroups):
    torch.manual_seed(L)
    layer = LinearAttention(24, d_state=8, headdim=12, ngroups=ngroups, feature_map=fmap, chunk_size=32,
                            dtype=torch.float64)
    u = torch.randn(2, L, 24, dtype=torch.float64, requires_grad=True)
    out, ref = layer(u), quadratic(layer, u)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [u, *layer.parameters()], g)
    grads_ref = torch.autograd.grad(ref, [u, *layer.parameters()], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)


def test_gradcheck_float64():
    torch.manual_seed(0)
    layer = LinearAttention(8, d_state=4, headdim=4, feature_map="elu1", chunk_size=4, dtype=torch.float64)
    u = torch.randn(1, 9, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: layer(x), (u,))


def test_float32_close_to_float64():
    torch.manual_seed(1)
    layer = LinearAttention(32, d_state=16, headdim=16)
    u = torch.randn(3, 45, 32)
    ref = quadratic(layer.double(), u.double()).float()
    torch.testing.assert_close(layer.float()(u), ref, atol=1e-4, rtol=1e-4)


def test_decoding_step_by_step_equals_the_parallel_forward():
    torch.manual_seed(2)
    cfg = MambaConfig(d_model=32, n_layer=2, vocab_size=12,
                      ssm_cfg={"layer": "LinearAttention", "d_state": 8, "headdim": 16})
    model = MambaLM(cfg)
    ids = torch.randint(0, 12, (2, 11))
    full = model(ids)
    cache = model.allocate_cache(2, 11)
    logits = model(ids[:, :4], cache=cache)
    steps = [model.step(ids[:, t:t + 1], cache) for t in range(4, 11)]
    torch.testing.assert_close(torch.cat([logits, *steps], dim=1), full, atol=1e-5, rtol=1e-4)


def test_feature_maps():
    x = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.equal(feature_map(x, "identity"), x)
    torch.testing.assert_close(feature_map(x, "elu1"), F.elu(x) + 1)
    assert torch.equal(feature_map(x, "relu"), torch.tensor([0.0, 0.0, 3.0]))


@pytest.mark.parametrize("kwargs,match", [
    ({"feature_map": "softmax"}, "feature_map"),
    ({"headdim": 5}, "multiple of headdim"),
    ({"ngroups": 3}, "ngroups"),
    ({"d_state": 0}, "d_state"),
])
def test_bad_arguments_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LinearAttention(32, **{"headdim": 16, **kwargs})


def test_config_refuses_mimetic_init_for_linear_attention():
    with pytest.raises(ValueError, match="init='mimetic' applies to"):
        MambaConfig(d_model=32, n_layer=1, vocab_size=10, ssm_cfg={"layer": "LinearAttention", "headdim": 16},
                    init="mimetic")
    with pytest.raises(ValueError, match="feature_map"):
        MambaConfig(d_model=32, n_layer=1, vocab_size=10,
                    ssm_cfg={"layer": "LinearAttention", "headdim": 16, "feature_map": "x"})
