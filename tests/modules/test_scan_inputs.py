"""The layers' scan_inputs / qk are what their forward uses: the reference scan of
scan_inputs, gated and projected, is the layer's output."""
from __future__ import annotations

import pytest
import torch
from einops import rearrange

from mimetic.modules import MHA, Mamba, Mamba2
from mimetic.ops.selective_scan.reference import selective_scan_ref
from mimetic.ops.ssd.reference import ssd_scan_ref


def _input(layer, L=11):
    return torch.randn(2, L, layer.d_model, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("kwargs", [pytest.param({}, id="default"),
                                    pytest.param({"dt_rank": 3, "d_state": 4}, id="rank3")])
def test_mamba_scan_inputs_reproduce_the_output(kwargs):
    torch.manual_seed(0)
    layer = Mamba(16, **kwargs)
    h = _input(layer)
    with torch.no_grad():
        y = selective_scan_ref(**layer.scan_inputs(h))
        out = layer.out_proj(y.transpose(1, 2))
        torch.testing.assert_close(out, layer(h), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kwargs", [
    pytest.param({}, id="gated-norm"),
    pytest.param({"rmsnorm": False}, id="gate-in-scan"),
    pytest.param({"ngroups": 2, "D_has_hdim": True, "dt_limit": (0.01, 0.5)}, id="groups"),
])
def test_mamba2_scan_inputs_reproduce_the_output(kwargs):
    torch.manual_seed(0)
    layer = Mamba2(32, d_state=8, headdim=8, chunk_size=4, **kwargs)
    u = _input(layer)
    with torch.no_grad():
        inputs, z = layer.scan_inputs(u)
        y = rearrange(ssd_scan_ref(**inputs), "b l h p -> b l (h p)")
        out = layer.out_proj(layer.norm(y, z) if layer.rmsnorm else y)
        torch.testing.assert_close(out, layer(u), atol=1e-5, rtol=1e-4)


def test_mha_qk_is_what_the_layer_attends_with():
    torch.manual_seed(0)
    layer = MHA(16, num_heads=4, num_heads_kv=2, rotary_emb_dim=4)
    x = torch.randn(2, 11, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        q, k = layer.qk(x)
        v = layer.in_proj(x)[..., -2 * 4:]   # the last num_heads_kv * head_dim columns
        v = rearrange(v, "b l (h d) -> b l h d", h=2)
        out = layer._attend(q, k, v, causal=True)
        torch.testing.assert_close(out, layer(x), atol=1e-6, rtol=1e-5)
