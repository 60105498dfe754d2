"""The maps are the layers' exact operators: M x reproduces the scan, and the layer output."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mimetic import MambaConfig, MambaLM
from mimetic.analysis import (
    MapMemoryError,
    attention_maps,
    mixer_attention_map,
    scan_inputs,
    selective_scan_map,
    ssd_map,
)
from mimetic.ops.selective_scan.reference import selective_scan_ref
from mimetic.ops.ssd.reference import ssd_scan_ref

VOCAB = 24


def make_model(layer: str, init: str, n_layer: int = 2, attn: tuple = (), d_model: int = 32,
               seed: int = 0) -> MambaLM:
    torch.manual_seed(seed)
    ssm = {"layer": layer, "d_state": 8}
    if layer == "Mamba2":
        ssm.update(headdim=16, chunk_size=16)
    cfg = MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=VOCAB, ssm_cfg=ssm,
                      attn_layer_idx=list(attn), attn_cfg={"num_heads": 2} if attn else {},
                      init=init)
    return MambaLM(cfg)


def mixer_input(model: MambaLM, input_ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The mixer input of ``layer``, by running the blocks by hand (not through hooks)."""
    hidden, residual = model.backbone.embedding(input_ids), None
    for block in model.backbone.layers[:layer]:
        hidden, residual = block(hidden, residual)
    block = model.backbone.layers[layer]
    return block._add_norm(block.norm, hidden, residual)[0]


def apply_map(layer: str, M: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if layer == "Mamba1":  # M (b, d, L, L) per channel, x (b, d, L)
        return torch.einsum("bdts,bds->bdt", M, x)
    return torch.einsum("bhts,bshp->bthp", M, x)  # M (b, h, L, L), x (b, L, h, p)


@pytest.mark.parametrize("init", ["mimetic", "default"])
@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_map_reproduces_reference_scan_and_layer_output(layer, init):
    model = make_model(layer, init)
    ids = torch.randint(0, VOCAB, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        u = mixer_input(model, ids, 1)
        mixer = model.backbone.layers[1].mixer
        s = scan_inputs(mixer, u)
        every = range(mixer.d_inner) if layer == "Mamba1" else None
        M = mixer_attention_map(mixer, u, channels=every, tile_size=8)
        y = apply_map(layer, M, s["x"])
        # The oracle scan on the same inputs, without D and gate.
        if layer == "Mamba1":
            ref = selective_scan_ref(s["x"], s["delta"], s["A"], s["B"], s["C"])
        else:
            ref = ssd_scan_ref(s["x"], s["dt"], s["A"], s["B"], s["C"])
        scale = ref.abs().max()
        assert scale > 0
        torch.testing.assert_close(y, ref, atol=1e-5 * scale, rtol=1e-4)
        # Add D, gate and project: the layer's own output, so scan_inputs recomputed conv,
        # dt, B and C exactly as the layer does.
        if layer == "Mamba1":
            full = (y + s["D"][:, None] * s["x"]) * F.silu(s["z"])
            out = mixer.out_proj(full.transpose(1, 2))
        else:
            full = y + s["x"] * s["D"][:, None]
            out = mixer._gate_and_project(full.flatten(2), s["z"])
        torch.testing.assert_close(out, mixer(u), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attn_cfg", [{"num_heads": 2},
                                      {"num_heads": 4, "num_heads_kv": 2, "rotary_emb_dim": 4}])
def test_attention_layer_map_is_the_softmax_that_the_layer_uses(attn_cfg):
    model = make_model("Mamba2", "mimetic", n_layer=2, attn=(1,))
    if attn_cfg["num_heads"] != 2:  # grouped KV heads and rotary embeddings
        torch.manual_seed(0)
        model = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=VOCAB, attn_layer_idx=[1],
                                    attn_cfg=attn_cfg, ssm_cfg={"layer": "Mamba2", "headdim": 16}))
    ids = torch.randint(0, VOCAB, (2, 21), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        u = mixer_input(model, ids, 1)
        mixer = model.backbone.layers[1].mixer
        P = mixer_attention_map(mixer, u, tile_size=4)
        H = attn_cfg["num_heads"]
        assert P.shape == (2, H, 21, 21)
        torch.testing.assert_close(P.sum(-1), torch.ones(2, H, 21))
        assert (P.triu(1) == 0).all()
        _, _, v = mixer._qkv(u, 0)
        v = v.repeat_interleave(H // v.shape[2], dim=2)
        out = torch.einsum("bhts,bshd->bthd", P, v).flatten(2)
        torch.testing.assert_close(mixer.out_proj(out), mixer(u), atol=1e-5, rtol=1e-4)


def test_attention_maps_hooks_capture_the_right_inputs():
    model = make_model("Mamba1", "default", n_layer=3, attn=(1,))
    ids = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(3))
    maps = attention_maps(model, ids, layers=[2, 1])
    assert list(maps) == [1, 2]
    assert maps[1].shape == (2, 2, 19, 19) and maps[2].shape == (2, 1, 19, 19)
    with torch.no_grad():
        for i in (1, 2):
            expected = mixer_attention_map(model.backbone.layers[i].mixer, mixer_input(model, ids, i))
            torch.testing.assert_close(maps[i], expected)
    assert all(not m._forward_pre_hooks for m in model.modules())  # hooks removed
    # Layers after the last one asked for are not run.
    ran = []
    handle = model.backbone.layers[2].register_forward_hook(lambda *a: ran.append(True))
    attention_maps(model, ids, layers=1)
    handle.remove()
    assert not ran
    # (L,) input, negative index, and one int
    one = attention_maps(model, ids[0], layers=-1)
    torch.testing.assert_close(one[2], maps[2][:1])


def test_reductions_channels_and_tiles_agree():
    g = torch.Generator().manual_seed(4)
    b, d, n, L = 2, 6, 4, 29
    delta = torch.rand(b, d, L, generator=g) * 0.5
    A = -torch.rand(d, n, generator=g) * 3
    B, C = torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g)
    every = selective_scan_map(delta, A, B, C, reduce="none")
    assert every.shape == (b, d, L, L) and (every.triu(1) == 0).all()
    for tile in (1, 5, 16, 64):
        torch.testing.assert_close(selective_scan_map(delta, A, B, C, reduce="none", tile_size=tile),
                                   every, atol=1e-6, rtol=1e-5)
    # work_bytes so small that every channel and query row is its own chunk
    torch.testing.assert_close(selective_scan_map(delta, A, B, C, reduce="none", work_bytes=1),
                               every, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(selective_scan_map(delta, A, B, C)[:, 0], every.abs().mean(1))
    torch.testing.assert_close(selective_scan_map(delta, A, B, C, reduce="mean")[:, 0], every.mean(1))
    torch.testing.assert_close(selective_scan_map(delta, A, B, C, channels=[4, 1]), every[:, [4, 1]])


def test_long_fast_decaying_sequences_stay_finite_and_exact():
    """cum(delta A) reaches thousands below zero: exp(cum[t]) / exp(cum[s]) would be 0/0."""
    g = torch.Generator().manual_seed(5)
    # Mamba-2: one fast head and one slow head.
    b, L, H, P, G, N = 1, 1024, 2, 2, 1, 4
    dt = torch.full((b, L, H), 1.0)
    A = torch.tensor([-8.0, -1e-3])
    B, C = torch.randn(b, L, G, N, generator=g), torch.randn(b, L, G, N, generator=g)
    x = torch.randn(b, L, H, P, generator=g)
    assert (dt[0, :, 0] * A[0]).sum() < -100 * math.log(10)  # exp() of it underflows float32
    M = ssd_map(dt, A, B, C, tile_size=100)
    assert torch.isfinite(M).all()
    torch.testing.assert_close(apply_map("Mamba2", M, x), ssd_scan_ref(x, dt, A, B, C),
                               atol=1e-4, rtol=1e-4)
    # Mamba-1: states decaying at very different rates within one channel.
    d, n, L1 = 3, 4, 300
    delta = torch.full((b, d, L1), 2.0)
    A1 = -torch.tensor([0.001, 0.1, 5.0, 40.0]).repeat(d, 1)
    B1, C1 = torch.randn(b, n, L1, generator=g), torch.randn(b, n, L1, generator=g)
    u = torch.randn(b, d, L1, generator=g)
    M1 = selective_scan_map(delta, A1, B1, C1, reduce="none", tile_size=32)
    assert torch.isfinite(M1).all()
    torch.testing.assert_close(apply_map("Mamba1", M1, u), selective_scan_ref(u, delta, A1, B1, C1),
                               atol=1e-4, rtol=1e-4)


def test_working_memory_is_bounded_by_tiles(monkeypatch):
    """The largest decay block stays within work_bytes, however long the sequence."""
    from mimetic.analysis import maps as maps_module

    sizes = []
    real = maps_module._decay

    def recording(*args):
        out = real(*args)
        sizes.append(out.numel() * out.element_size())
        return out

    monkeypatch.setattr(maps_module, "_decay", recording)
    g = torch.Generator().manual_seed(7)
    L, H, work = 512, 2, 1 << 20
    dt = torch.rand(1, L, H, generator=g)
    B, C = torch.randn(1, L, 1, 4, generator=g), torch.randn(1, L, 1, 4, generator=g)
    M = ssd_map(dt, -torch.ones(H), B, C, work_bytes=work)
    assert len(sizes) > 1 and max(sizes) <= work  # several tiles, each within budget
    assert map_bytes_of(M) > work
    sizes.clear()
    delta = torch.rand(1, 4, L, generator=g)
    selective_scan_map(delta, -torch.rand(4, 4, generator=g), B[:, :, 0].mT, C[:, :, 0].mT,
                       work_bytes=work)
    assert max(sizes) <= work


def map_bytes_of(M: torch.Tensor) -> int:
    return M.numel() * M.element_size()


def reach(M: torch.Tensor, k: int) -> float:
    """Mean |M[t, t-k]| relative to mean |M[t, t-1]|: how much of a token k steps back the
    layer still sees, compared with the previous token."""
    diag = lambda j: torch.diagonal(M.abs(), offset=-j, dim1=-2, dim2=-1).mean()
    return float(diag(k) / diag(1))


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_mimetic_maps_reach_back_default_maps_decay(layer):
    ids = torch.randint(0, VOCAB, (1, 128), generator=torch.Generator().manual_seed(6))
    for init in ("mimetic", "default"):
        model = make_model(layer, init, n_layer=1, d_model=64)
        mixer = model.backbone.layers[0].mixer
        with torch.no_grad():
            s = scan_inputs(mixer, mixer_input(model, ids, 0))
        if layer == "Mamba1":  # (batch, d_inner, d_state, L)
            rate = s["delta"][:, :, None, :] * s["A"][None, :, :, None]
        else:  # (batch, heads, L)
            rate = (s["dt"] * s["A"]).transpose(1, 2)
        whole = rate.sum(-1).exp()  # decay over the whole sequence, per channel (and state)
        M = attention_maps(model, ids)[0]
        if init == "mimetic":  # linear attention: nothing forgotten, far tokens seen as well
            assert whole.min() > 0.9
            assert min(reach(M, 32), reach(M, 64)) > 0.7
        else:  # most channels forget within the sequence; the map fades off the diagonal
            assert whole.median() < 0.05
            assert reach(M, 32) < 0.3 and reach(M, 64) < 0.2


def test_bad_inputs_give_clear_errors():
    model = make_model("Mamba2", "default", n_layer=2)
    ids = torch.randint(0, VOCAB, (1, 8))
    with pytest.raises(TypeError, match="MambaLM"):
        attention_maps(torch.nn.Linear(2, 2), ids)
    with pytest.raises(IndexError, match="2 layers"):
        attention_maps(model, ids, layers=[0, 2])
    with pytest.raises(IndexError, match="out of range"):
        attention_maps(model, ids, layers=-3)
    with pytest.raises(ValueError, match="empty"):
        attention_maps(model, ids, layers=[])
    with pytest.raises(ValueError, match="channels|heads"):
        attention_maps(model, ids, channels=[99])
    with pytest.raises(TypeError, match="Linear"):
        mixer_attention_map(torch.nn.Linear(2, 2), torch.zeros(1, 3, 2))
    # 1 x 4 heads x 4096^2 x 4 bytes x 2 layers = 512 MiB > 64 MiB; refused before running
    long_ids = torch.zeros(1, 4096, dtype=torch.long)
    with pytest.raises(MapMemoryError, match=r"max_bytes=67108864"):
        attention_maps(model, long_ids, max_bytes=64 << 20)
    mamba1 = make_model("Mamba1", "default", n_layer=1)
    with pytest.raises(ValueError, match="reduce"):
        attention_maps(mamba1, ids, reduce="max")
    with pytest.raises(MapMemoryError, match="max_bytes"):  # every channel as a head: 64x
        attention_maps(mamba1, torch.zeros(1, 512, dtype=torch.long), reduce="none",
                       max_bytes=32 << 20)
