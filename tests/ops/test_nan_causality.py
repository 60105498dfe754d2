"""A non-finite value at position t leaves every output before t finite, in every backend of
every op (issue 14: the chunked SSD path turned 0 * NaN in its masked in-chunk matmul into
NaN at earlier positions)."""
import math
import os

import pytest
import torch

from mimetic.ops import causal_conv1d, rms_norm, selective_scan, ssd_scan
from mimetic.ops._dispatch import triton_available

BACKENDS = ["reference", "torch"] + (["triton"] if triton_available() and os.environ.get("TRITON_INTERPRET") else [])
L, T_BAD = 24, 13  # the bad step sits inside a chunk (chunk_size 8 below), not at its start
BAD = [float("nan"), float("inf"), -float("inf")]


def _poison(t: torch.Tensor, time_dim: int, value: float) -> torch.Tensor:
    t = t.clone()
    index = [0] * t.dim()
    index[time_dim] = T_BAD
    t[tuple(index)] = value  # one entry at step T_BAD
    return t


def _assert_causal(out: torch.Tensor, time_dim: int, what: str, value: float) -> None:
    before = out.narrow(time_dim, 0, T_BAD)
    assert torch.isfinite(before).all(), f"{what}: non-finite output before step {T_BAD}"
    if math.isnan(value):  # (an inf may be absorbed, e.g. softplus(-inf) = 0)
        assert not torch.isfinite(out.select(time_dim, T_BAD)).all(), f"{what}: the NaN did not reach its step"


def _ssd_inputs(g):
    b, H, P, G, N = 2, 4, 8, 2, 8
    return dict(x=torch.randn(b, L, H, P, generator=g), dt=torch.rand(b, L, H, generator=g),
                A=-torch.rand(H, generator=g) - 0.5, B=torch.randn(b, L, G, N, generator=g),
                C=torch.randn(b, L, G, N, generator=g), D=torch.randn(H, generator=g),
                z=torch.randn(b, L, H, P, generator=g), dt_bias=torch.rand(H, generator=g))


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("name", ["x", "dt", "B", "C", "z"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ssd_scan_stays_causal(backend, name, value):
    inputs = _ssd_inputs(torch.Generator().manual_seed(0))
    inputs[name] = _poison(inputs[name], 1, value)
    y, final = ssd_scan(**inputs, chunk_size=8, dt_softplus=True, return_final_states=True, backend=backend)
    _assert_causal(y, 1, f"ssd_scan[{backend}] {name}={value}", value)


def _ss_inputs(g):
    b, D, N = 2, 6, 4
    return dict(u=torch.randn(b, D, L, generator=g), delta=torch.randn(b, D, L, generator=g),
                A=-torch.rand(D, N, generator=g) - 0.5, B=torch.randn(b, N, L, generator=g),
                C=torch.randn(b, N, L, generator=g), D=torch.randn(D, generator=g),
                z=torch.randn(b, D, L, generator=g), delta_bias=torch.rand(D, generator=g))


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("name", ["u", "delta", "B", "C", "z"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_selective_scan_stays_causal(backend, name, value):
    inputs = _ss_inputs(torch.Generator().manual_seed(1))
    inputs[name] = _poison(inputs[name], 2, value)
    y, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend=backend)
    _assert_causal(y, 2, f"selective_scan[{backend}] {name}={value}", value)


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_conv1d_stays_causal(backend, value):
    g = torch.Generator().manual_seed(2)
    x = _poison(torch.randn(2, 6, L, generator=g), 2, value)
    out = causal_conv1d(x, torch.randn(6, 4, generator=g), torch.randn(6, generator=g), activation="silu",
                        backend=backend)
    _assert_causal(out, 2, f"causal_conv1d[{backend}]", value)


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rms_norm_keeps_other_positions_finite(backend, value):
    g = torch.Generator().manual_seed(3)
    x = _poison(torch.randn(2, L, 16, generator=g), 1, value)
    out = rms_norm(x, torch.randn(16, generator=g), z=torch.randn(2, L, 16, generator=g), group_size=8,
                   backend=backend)
    _assert_causal(out, 1, f"rms_norm[{backend}]", value)
    assert torch.isfinite(out.narrow(1, T_BAD + 1, L - T_BAD - 1)).all()  # a norm is per position


# ---- layers and the LM: a non-finite input at step t leaves earlier outputs finite ----------

def _layers():
    from mimetic import Mamba, Mamba2
    from mimetic.modules import MHA

    torch.manual_seed(0)
    return {"Mamba1": Mamba(16, d_state=4), "Mamba2": Mamba2(16, d_state=8, headdim=8, chunk_size=8),
            "attention": MHA(16, num_heads=2)}


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("kind", ["Mamba1", "Mamba2", "attention"])
def test_layer_stays_causal(kind, value):
    layer = _layers()[kind]
    x = _poison(torch.randn(2, L, 16, generator=torch.Generator().manual_seed(4)), 1, value)
    with torch.no_grad():
        _assert_causal(layer(x), 1, kind, value)


@pytest.mark.parametrize("kind", ["Mamba1", "Mamba2", "attention"])
def test_lm_with_a_nan_weight_row_stays_causal(kind):
    from mimetic import MambaConfig, MambaLM

    ssm = {"layer": "Mamba2", "d_state": 8, "headdim": 8, "chunk_size": 8} if kind == "Mamba2" else \
        {"layer": "Mamba1", "d_state": 4}
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=10, ssm_cfg=ssm, tie_embeddings=False,
                                attn_layer_idx=[0, 1] if kind == "attention" else [], attn_cfg={"num_heads": 2}))
    with torch.no_grad():
        model.backbone.embedding.weight[7] = float("nan")  # token 7 only appears at step T_BAD
        ids = torch.randint(0, 7, (2, L), generator=torch.Generator().manual_seed(5))
        ids[:, T_BAD] = 7
        _assert_causal(model(ids), 1, f"MambaLM[{kind}]", math.nan)


def test_triton_backend_without_triton_asks_for_the_package(monkeypatch):
    import mimetic.ops._dispatch as dispatch

    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs the triton package"):
        dispatch.resolve_backend("triton", torch.zeros(1), has_triton_kernel=False)
