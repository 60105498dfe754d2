"""Second adversarial pass of issue 14, training: what ``train`` is given is checked before it
runs (model, task, config types; a model without parameters; logits that do not fit the
task), ``allow_changed`` names real settings, and ``save_checkpoint`` writes only what
loading accepts (step, keep, a weights_only-loadable state)."""
import pytest
from torch import nn

from mimetic.tasks import make_task
from mimetic.train import TrainConfig, save_checkpoint, train
from mimetic.train.checkpoint import list_checkpoints

from .tiny import TinyLM

TASK = make_task("copy", vocab=6, copy_len=4)


def cfg(**kw):
    return TrainConfig(**{**dict(steps=4, batch_size=2, eval_every=2, eval_batches=1, progress=False,
                                 device="cpu"), **kw})


class Narrow(nn.Module):
    """Logits over fewer classes than the task's tokens."""

    def __init__(self, classes):
        super().__init__()
        self.embedding = nn.Embedding(TASK.vocab_size, 4)
        self.head = nn.Linear(4, classes)

    def forward(self, ids):
        return self.head(self.embedding(ids))


class Pooled(Narrow):
    def forward(self, ids):  # (B, V): one prediction per sequence
        return super().forward(ids).mean(1)


class Shorter(Narrow):
    def forward(self, ids):
        return super().forward(ids)[:, :-1]


@pytest.mark.parametrize("model", [Narrow(2), Pooled(TASK.vocab_size), Shorter(TASK.vocab_size)],
                         ids=["narrow", "pooled", "shorter"])
def test_logits_that_do_not_fit_the_task_are_refused(model, tmp_path):
    with pytest.raises(ValueError, match=r"train: the model must map input_ids \(2, \d+\) to float logits .*"
                                         rf"vocab_size {TASK.vocab_size}; got "):
        train(model, TASK, cfg(out_dir=str(tmp_path)))
    assert list_checkpoints(tmp_path) == []


def test_wider_logits_are_fine():
    assert train(Narrow(TASK.vocab_size + 3), TASK, cfg()).step == 4


@pytest.mark.parametrize("args, match", [
    (lambda: (TinyLM(TASK.vocab_size), "copy", cfg()), r"task must be a mimetic.tasks.Task .*got str"),
    (lambda: (TinyLM(TASK.vocab_size), TASK, {"steps": 4}), r"config must be a TrainConfig, got dict"),
    (lambda: (lambda ids: ids, TASK, cfg()), r"model must be a torch.nn.Module, got function"),
])
def test_arguments_of_the_wrong_kind_are_type_errors(args, match):
    with pytest.raises(TypeError, match=match):
        train(*args())


def test_model_without_trainable_parameters_is_refused():
    model = TinyLM(TASK.vocab_size).requires_grad_(False)
    with pytest.raises(ValueError, match=r"no trainable parameters"):
        train(model, TASK, cfg())


@pytest.mark.parametrize("names", [("lrr",), ("lr", "task_copy_len"), ("model.",)])
def test_allow_changed_names_must_be_settings(names):
    with pytest.raises(ValueError, match=r"allow_changed names .* which are no settings"):
        cfg(allow_changed=names)


@pytest.mark.parametrize("names", [("lr",), ("task.copy_len", "model.ssm_cfg.d_state"), ("task", "model"), ()])
def test_allow_changed_takes_settings(names):
    assert cfg(allow_changed=names).allow_changed == names


@pytest.mark.parametrize("kw, match", [
    (dict(step=-1), r"step must be an int >= 0, got -1"),
    (dict(step=2.0), r"step must be an int >= 0, got 2.0"),
    (dict(keep=0), r"keep must be an int >= 1"),
    (dict(state={"optimizer": {}}), r"state must be a dict with a 'step' entry"),
    (dict(state={"step": 1, "note": object()}), r"state entry state.note \(object\) cannot be loaded"),
    (dict(state={"step": 1, "h": [{"x": {1, 2}}]}), r"state entry state.h.0.x \(set\)"),
])
def test_save_checkpoint_refuses_what_loading_would(tmp_path, kw, match):
    args = dict(step=1, state={"step": 1, "optimizer": {}}, keep=2) | kw
    with pytest.raises(ValueError, match=match):
        save_checkpoint(tmp_path, args["step"], TinyLM(TASK.vocab_size), args["state"], keep=args["keep"])
    assert not (tmp_path / "checkpoints").exists()
