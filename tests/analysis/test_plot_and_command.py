"""Pictures are written (Mamba and attention side by side) and the CLI entry point works."""
from __future__ import annotations

import matplotlib.image
import pytest
import torch

from mimetic import MambaConfig, MambaLM
from mimetic.analysis import MapMemoryError, attention_maps, attn_command, plot_attention_maps
from mimetic.analysis.command import _parse_inputs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def hybrid(vocab: int = 40) -> MambaLM:
    """Mamba-2, attention, Mamba-1-free hybrid: layer 1 is MHA."""
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=vocab,
                               ssm_cfg={"layer": "Mamba2", "d_state": 8, "headdim": 16},
                               attn_layer_idx=[1], attn_cfg={"num_heads": 2}, init="mimetic"))


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    h, w = matplotlib.image.imread(path).shape[:2]
    return w, h


def test_plot_grid_mamba_and_attention(tmp_path):
    model = hybrid()
    ids = torch.randint(0, 40, (2, 20), generator=torch.Generator().manual_seed(0))
    maps = attention_maps(model, ids)
    assert maps[0].shape[1] == 4 and maps[1].shape[1] == 2
    wide = plot_attention_maps(maps, tmp_path / "sub" / "log.png", tokens=[f"t{i}" for i in range(20)],
                               title="log", marks=[5], batch_index=1)
    narrow = plot_attention_maps(maps, tmp_path / "one_head.png", max_heads=1, log_scale=False,
                                 signed=True)
    w4, h4 = png_size(wide)
    w1, h1 = png_size(narrow)
    assert w1 < w4 * 0.6  # one column instead of four
    assert abs(h1 - h4) < 0.1 * h4  # same two rows (layers)


def test_plot_rejects_bad_maps(tmp_path):
    good = torch.rand(1, 1, 5, 5)
    with pytest.raises(ValueError, match="no maps"):
        plot_attention_maps({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="batch, heads, L, L"):
        plot_attention_maps({0: torch.rand(5, 5)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="same length"):
        plot_attention_maps({0: good, 1: torch.rand(1, 1, 6, 6)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="tokens"):
        plot_attention_maps({0: good}, tmp_path / "x.png", tokens=["a"])
    with pytest.raises(ValueError, match="signed"):
        plot_attention_maps({0: good}, tmp_path / "x.png", signed=True)
    with pytest.raises(IndexError, match="batch_index"):
        plot_attention_maps({0: good}, tmp_path / "x.png", batch_index=1)


def test_attn_command_from_checkpoint_with_task_and_ids(tmp_path):
    model = hybrid()
    model.save_pretrained(tmp_path / "ckpt")
    out = attn_command(tmp_path / "ckpt", "copy", tmp_path / "copy.png",
                       task_kwargs={"copy_len": 8, "vocab": 6})
    png_size(out.path)
    assert out.input_ids.shape == (1, 17) and set(out.maps) == {0, 1}
    assert out.kinds == {0: "Mamba2", 1: "attention"}
    assert set(out.summary[0]) == {"uniform_causal", "identity", "copy"}
    lines = out.lines()
    assert len(lines) == 2 and lines[1].startswith("layer 1 (attention, 2 heads)")
    # the same maps as computing them directly on the loaded weights
    torch.testing.assert_close(out.maps[0], attention_maps(model, out.input_ids, layers=0)[0])

    ids = attn_command(model, "3, 1 4 1 5", tmp_path / "ids.png", layers=[-1], log_scale=False)
    assert ids.input_ids.tolist() == [[3, 1, 4, 1, 5]] and list(ids.maps) == [1]
    ids, labels, marks, task = _parse_inputs([[3, 1, 4]], vocab_size=40, seed=0, task_kwargs=None)
    assert ids.tolist() == [[3, 1, 4]] and labels == ["3", "1", "4"] and task is None
    ids, labels, marks, task = _parse_inputs("copy", 40, 0, {"copy_len": 4, "vocab": 5})
    assert labels[0] == "BOS" and labels[5] == "SEP" and marks == [5]


def test_attn_command_errors(tmp_path):
    model = hybrid(vocab=10)
    with pytest.raises(ValueError, match="neither a task name"):
        attn_command(model, "hello", tmp_path / "x.png")
    with pytest.raises(ValueError, match="vocabulary"):
        attn_command(model, "copy", tmp_path / "x.png", task_kwargs={"vocab": 26})
    with pytest.raises(ValueError, match="task_kwargs"):
        attn_command(model, "1 2", tmp_path / "x.png", task_kwargs={"copy_len": 3})
    with pytest.raises(ValueError, match="non-empty"):
        attn_command(model, "", tmp_path / "x.png")
    with pytest.raises(IndexError, match="2 layers"):
        attn_command(model, "1 2 3", tmp_path / "x.png", layers=[5])
    with pytest.raises(MapMemoryError, match="max_bytes"):
        attn_command(model, "1 " * 300, tmp_path / "x.png", max_bytes=1 << 20)
    with pytest.raises(FileNotFoundError):
        attn_command(tmp_path / "missing", "1 2", tmp_path / "x.png")
    with pytest.raises(TypeError, match="MambaLM"):
        attn_command(torch.nn.Linear(2, 2), "1 2", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
