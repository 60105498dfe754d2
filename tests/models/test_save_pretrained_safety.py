"""``save_pretrained`` writes nothing ``from_pretrained`` would refuse and never half a
checkpoint (issue 14)."""
import pytest
import torch

from mimetic import MambaConfig, MambaLM
from mimetic.models import checkpoint as ckpt_module


def tiny(seed=0):
    torch.manual_seed(seed)
    return MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=8, ssm_cfg={"layer": "Mamba2", "d_state": 4,
                                                                            "headdim": 8}))


def test_nonfinite_weights_are_not_saved(tmp_path):
    model = tiny()
    with torch.no_grad():
        model.backbone.layers[0].mixer.A_log[0] = float("nan")
    with pytest.raises(ValueError, match=r"not saving .*: tensor backbone\.layers\.0\.mixer\.A_log holds non-finite"):
        model.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_a_crash_while_writing_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    old = tiny(0)
    old.save_pretrained(tmp_path / "ckpt")

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_module, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        tiny(1).save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MambaLM.from_pretrained(tmp_path / "ckpt")
    for (name, a), (_, b) in zip(loaded.state_dict().items(), old.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_a_file_as_the_folder_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"is a file, not a folder"):
        tiny().save_pretrained(tmp_path / "f")
