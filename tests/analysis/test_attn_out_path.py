"""``attn --out`` writes where it says (issue 14): a folder gets ``attention_maps.png`` in it,
a name without a suffix gets ``.png``, the path reported is the file written; a suffix
matplotlib cannot write is refused before any work."""
from __future__ import annotations

import pytest
import torch

from mimetic import MambaConfig, MambaLM
from mimetic.analysis import attn_command, plot_attention_maps
from mimetic.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny() -> MambaLM:
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=8,
                               ssm_cfg={"layer": "Mamba2", "d_state": 4, "headdim": 8}))


def is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def test_existing_folder_gets_a_file_inside(tmp_path):
    folder = tmp_path / "maps"
    folder.mkdir()
    out = attn_command(tiny(), "1 2 3", folder)
    assert out.path == str(folder / "attention_maps.png") and is_png(out.path)
    assert not (tmp_path / "maps.png").exists()


def test_path_ending_in_a_separator_is_a_folder(tmp_path):
    out = attn_command(tiny(), "1 2 3", f"{tmp_path / 'new'}/")
    assert out.path == str(tmp_path / "new" / "attention_maps.png") and is_png(out.path)


def test_name_without_suffix_gets_png_and_says_so(tmp_path):
    out = attn_command(tiny(), "1 2 3", tmp_path / "maps")
    assert out.path == str(tmp_path / "maps.png") and is_png(out.path)


def test_plot_reports_the_file_matplotlib_writes(tmp_path):
    path = plot_attention_maps({0: torch.rand(1, 1, 3, 3).tril()}, tmp_path / "bare")
    assert path == str(tmp_path / "bare.png") and is_png(path)


def test_unwritable_suffix_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"cannot write '\.txt' files .*\.png"):
        attn_command(tmp_path / "no_such_checkpoint", "1 2 3", tmp_path / "maps.txt")
    assert not (tmp_path / "maps.txt").exists()


def test_other_suffix_matplotlib_writes_is_kept(tmp_path):
    out = attn_command(tiny(), "1 2 3", tmp_path / "maps.svg")
    assert out.path == str(tmp_path / "maps.svg") and (tmp_path / "maps.svg").read_text().lstrip().startswith("<")


def test_cli_reports_the_file_it_wrote(tmp_path, capsys):
    tiny().save_pretrained(tmp_path / "ckpt")
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["attn", str(tmp_path / "ckpt"), "--input", "1 2 3", "--out", str(folder)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == f"attention maps written to {folder / 'attention_maps.png'}"
    assert is_png(folder / "attention_maps.png")
