"""Second adversarial pass of issue 14, the CLI and loaders: user errors found by the pass
are one line with exit 2 (not an 'internal error' or a silent run)."""
import pytest
import torch

from mimetic import MambaLM
from mimetic.train import TrainConfig
from mimetic.train.sweep import run_sweep

from .cli_helpers import TRAIN, assert_user_error, run_cli


def test_train_into_an_empty_out_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where it used to write its checkpoints and model/
    assert_user_error(*run_cli(capsys, *TRAIN, "--out", ""), "out_dir=''")
    assert list(tmp_path.iterdir()) == []


def test_train_on_the_meta_device_is_refused(capsys, tmp_path):
    assert_user_error(*run_cli(capsys, *TRAIN[:-2], "--device", "meta", "--out", str(tmp_path / "r")),
                      "device='meta'")


def test_allow_changed_without_resume_is_refused(capsys, tmp_path):
    assert_user_error(*run_cli(capsys, *TRAIN, "--out", str(tmp_path / "r"), "--allow-changed", "lr"),
                      "--allow-changed only applies with --resume")
    assert not (tmp_path / "r").exists()


def test_allow_changed_typo_is_refused(capsys, tmp_path):
    assert_user_error(*run_cli(capsys, *TRAIN, "--out", str(tmp_path / "r"), "--resume", "--allow-changed", "lrr"),
                      "allow_changed names ['lrr']")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_generate_on_cuda_without_cuda(capsys, tiny_checkpoint):
    assert_user_error(*run_cli(capsys, "generate", str(tiny_checkpoint), "--prompt", "1 2", "--device", "cuda"),
                      "CUDA is not available")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_from_pretrained_on_cuda_without_cuda(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"from_pretrained: device='cuda' but CUDA is not available"):
        MambaLM.from_pretrained(tiny_checkpoint, device="cuda")


def test_from_pretrained_on_an_unknown_device(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"from_pretrained: device='nosuch' is not a device name"):
        MambaLM.from_pretrained(tiny_checkpoint, device="nosuch")


def test_attn_layer_the_model_lacks(capsys, tiny_checkpoint, tmp_path):
    assert_user_error(*run_cli(capsys, "attn", str(tiny_checkpoint), "--input", "1 2", "--layers", "9",
                               "--out", str(tmp_path / "m.png")), "--layers:", "out of range")


def test_sweep_pack_that_is_no_number(capsys, tmp_path):
    (tmp_path / "s.toml").write_text("")
    assert_user_error(*run_cli(capsys, "sweep", str(tmp_path / "s.toml"), "--pack", "x", "--no-progress"),
                      "--pack must be auto, off or a positive int, got 'x'")


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_sweep_workers_must_be_positive(tmp_path, workers):
    with pytest.raises(ValueError, match=rf"workers must be an int >= 1, got {workers!r}"):
        run_sweep(tmp_path / "missing.toml", tmp_path / "out", workers=workers)
    assert not (tmp_path / "out").exists()


def test_trainconfig_refuses_an_empty_out_dir():
    with pytest.raises(ValueError, match=r"out_dir='' is no folder"):
        TrainConfig(out_dir="")
