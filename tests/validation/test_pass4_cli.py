"""Issue 14, fourth pass: CLI mistakes it found ending in an 'internal error (a bug)' line or
in a line that does not name what was wrong."""
from __future__ import annotations

import pytest
import torch

from mimetic import MambaConfig, MambaLM

from ..cli_helpers import TRAIN, assert_user_error, run_cli


def test_diverged_training_is_a_user_error(capsys, tmp_path):
    code, err = run_cli(capsys, *TRAIN, "--lr", "1e6", "--steps", "30", "--out", str(tmp_path / "r"))
    last = err.rsplit("\r", 1)[-1]  # after the progress bar's redraws
    assert_user_error(code, last, "non-finite loss", "step")
    assert "Traceback" not in err and "internal error" not in err, err


@pytest.mark.parametrize("item", ["=3", " =3"])
def test_task_arg_without_a_key(capsys, tmp_path, item):
    code, err = run_cli(capsys, *TRAIN, "--task-arg", item, "--out", str(tmp_path / "r"))
    assert_user_error(code, err, "--task-arg", repr(item))


def test_out_under_a_file(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    code, err = run_cli(capsys, *TRAIN, "--out", str(tmp_path / "f" / "run"))
    assert_user_error(code, err, "is a file, not a folder", str(tmp_path / "f"))


@pytest.mark.parametrize("text", ["", "  "])
def test_attn_empty_input_names_the_flag(capsys, tmp_path, text):
    torch.manual_seed(0)
    MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=8,
                        ssm_cfg={"layer": "Mamba2", "d_state": 4, "headdim": 8})).save_pretrained(tmp_path / "m")
    code, err = run_cli(capsys, "attn", str(tmp_path / "m"), "--input", text, "--out", str(tmp_path / "a.png"))
    assert_user_error(code, err, "--input")


def test_demo_rerun_into_the_same_folder(capsys, tmp_path):
    argv = ["demo", "--no-progress", "--steps", "2", "--copy-len", "4", "--threads", "1", "--out", str(tmp_path / "d")]
    assert run_cli(capsys, *argv)[0] == 0
    code, err = run_cli(capsys, *argv)  # it said "pass --resume", a flag demo does not have
    assert code == 0, err
