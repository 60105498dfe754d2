"""Run folders recorded while MambaConfig had a field it no longer has (``RETIRED_FIELDS``:
``fused_add_norm``) resume, and their sweep points are not taken for changed ones."""
import copy
from dataclasses import asdict

from mimetic import MambaConfig, MambaLM
from mimetic.tasks import make_task
from mimetic.train import TrainConfig, train
from mimetic.train.sweep import run_sweep

from .test_sweep import TINY, tiny_factory, write_toml

TASK = make_task("copy", vocab=6, copy_len=4)


def old_to_dict(self) -> dict:
    """What MambaConfig.to_dict recorded before fused_add_norm was dropped."""
    return {**asdict(self), "fused_add_norm": True}


def lm() -> MambaLM:
    return MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=TASK.vocab_size,
                               ssm_cfg={"layer": "Mamba2", "d_state": 4, "headdim": 8}))


def test_a_run_recorded_with_a_retired_field_resumes(tmp_path, monkeypatch):
    config = dict(steps=4, batch_size=4, eval_every=2, eval_batches=1, progress=False, out_dir=str(tmp_path),
                  device="cpu")
    with monkeypatch.context() as m:
        m.setattr(MambaConfig, "to_dict", old_to_dict)
        assert train(lm(), TASK, TrainConfig(**config, interrupt_after=2)).interrupted
    result = train(lm(), TASK, TrainConfig(**config, resume=True))
    assert result.step == 4 and not result.interrupted


def test_a_sweep_point_recorded_with_a_retired_field_is_not_a_changed_one(tmp_path, monkeypatch):
    data = copy.deepcopy(TINY)
    data["grid"].update(init=["default"], layer=["Mamba2"], d_state=[2], length=[2], seed=[0])
    data.pop("eval")
    path = write_toml(tmp_path / "s.toml", data)

    def sweep():
        return run_sweep(path, tmp_path / "out", progress=False, plot=False, model_factory=tiny_factory)

    with monkeypatch.context() as m:
        m.setattr(MambaConfig, "to_dict", old_to_dict)
        sweep()
    settings = (tmp_path / "out" / "runs" / "copy-default-Mamba2-d2-L2-s0" / "settings.json").read_text()
    assert "fused_add_norm" in settings
    assert sweep().skipped == 1
