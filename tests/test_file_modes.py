"""Every file a run or ``save_pretrained`` writes gets the mode the umask gives, folders
likewise (issue 14: safetensors created its files 0600 beside 0644 ones, so a checkpoint
copied or shared by group was half unreadable)."""
import os
import stat

import pytest
import torch

from mimetic import MambaConfig, MambaLM
from mimetic.tasks import make_task
from mimetic.train import TrainConfig, train
from mimetic.train.checkpoint import save_checkpoint


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def modes(root):
    """{relative path: permission bits} of everything under ``root``."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(folder, name)
            found[os.path.relpath(p, root)] = stat.S_IMODE(os.stat(p).st_mode)
    return found


def assert_umask_modes(root, umask):
    for rel, mode in modes(root).items():
        want = (0o777 if os.path.isdir(os.path.join(root, rel)) else 0o666) & ~umask
        assert mode == want, f"{rel}: {oct(mode)}, want {oct(want)}"


def tiny():
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=8, ssm_cfg={"layer": "Mamba1", "d_state": 4}))


def test_training_run_files(tmp_path, umask):
    task = make_task("copy", vocab=5, copy_len=3)
    train(tiny(), task, TrainConfig(steps=4, batch_size=2, eval_every=2, eval_batches=1, progress=False,
                                    device="cpu", out_dir=str(tmp_path / "run")))
    found = modes(tmp_path / "run")
    assert any(p.endswith("model.safetensors") for p in found) and ".lock" in found
    assert_umask_modes(tmp_path / "run", umask)


def test_save_checkpoint_files(tmp_path, umask):
    save_checkpoint(tmp_path, 1, tiny(), {"step": 1, "optimizer": {}})
    assert_umask_modes(tmp_path, umask)


def test_save_pretrained_files(tmp_path, umask):
    tiny().save_pretrained(tmp_path / "ckpt")
    assert sorted(modes(tmp_path / "ckpt")) == ["config.json", "model.safetensors"]  # no temporary left
    assert_umask_modes(tmp_path / "ckpt", umask)
