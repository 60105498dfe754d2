"""Weights (or optimizer state) that turn NaN/inf while the losses stay finite are caught at
the next checkpoint (issue 14): nothing is saved, the error names the tensor and the steps
since the last good checkpoint, which stays on disk; in ``train()`` and, per member, in the
ensemble path (the same message), without a check per step."""
import math

import pytest
import torch
from torch import nn

from mimetic.ensemble import train as ens_train
from mimetic.ensemble.train import train_ensemble
from mimetic.models import MambaConfig, MambaLM
from mimetic.tasks import make_task
from mimetic.train import NonFiniteLossError, NonFiniteWeightsError, TrainConfig, loop, train
from mimetic.train.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    newest_good_checkpoint,
    save_checkpoint,
)

from .tiny import TinyLM

TASK = make_task("copy", vocab=6, copy_len=4)


def cfg(out, **kw) -> TrainConfig:
    base = dict(steps=12, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=2, checkpoint_every=4,
                eval_batches=1, progress=False, out_dir=str(out), device="cpu", grad_clip=None,
                keep_checkpoints=5)
    return TrainConfig(**{**base, **kw})


class HiddenParam(TinyLM):
    """TinyLM plus a parameter the loss never sees (masked out by ``torch.where``, so a NaN
    in it stays out of every loss) whose gradient is ``bad_grad`` in the ``bad_call``-th
    training forward (and 0 otherwise)."""

    def __init__(self, vocab_size, bad_call, bad_grad):
        super().__init__(vocab_size)
        self.hidden = nn.Parameter(torch.zeros(3))
        self.calls, self.bad_call, self.bad_grad = 0, bad_call, bad_grad
        self.hidden.register_hook(lambda g: torch.full_like(g, self.bad_grad) if self.poison else g)
        self.poison = False

    def forward(self, input_ids):
        out = super().forward(input_ids)
        if self.training:
            self.calls += 1
            self.poison = self.calls == self.bad_call
        masked = torch.where(torch.zeros(3, dtype=torch.bool), self.hidden, 0.0).sum()
        return out + masked


def test_nan_weights_with_finite_losses_are_not_saved(tmp_path):
    # an inf gradient in the 6th step's update: AdamW makes that weight NaN (inf / inf); the
    # losses stay finite, so only the checkpoint after step 8 can see it
    model = HiddenParam(TASK.vocab_size, bad_call=6, bad_grad=math.inf)
    with pytest.raises(NonFiniteWeightsError, match=r"non-finite values in tensor hidden after step 8 .*"
                       r"finite after step 4: they turned non-finite in steps 5-8\).*step_0000004$") as e:
        train(model, TASK, cfg(tmp_path))
    assert "\n" not in str(e.value)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4]  # the last good one, kept
    assert not (tmp_path / "result.json").exists()
    load_checkpoint(list_checkpoints(tmp_path)[-1][1], HiddenParam(TASK.vocab_size, 0, 0.0))  # finite: loads


def test_nonfinite_weights_error_is_a_nonfinite_loss_error():
    # callers that catch NonFiniteLossError (sweep rows, the CLI, ensembles) catch it too
    assert issubclass(NonFiniteWeightsError, NonFiniteLossError)


def test_inf_optimizer_state_with_finite_weights_is_not_saved(tmp_path):
    # a gradient of 1e30 squares to inf in exp_avg_sq while the update (m / sqrt(v)) stays finite
    model = HiddenParam(TASK.vocab_size, bad_call=2, bad_grad=1e30)
    with pytest.raises(NonFiniteWeightsError, match=r"optimizer state optimizer\.state\.\d+\.exp_avg_sq after step 4 "
                       r".*finite after step 0: they turned non-finite in steps 1-4\).*no checkpoint saved yet"):
        train(model, TASK, cfg(tmp_path))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert list_checkpoints(tmp_path) == []


def test_nan_weights_in_the_last_step_before_a_checkpoint(tmp_path):
    # the update of step 4 itself: its loss (computed before the update) is finite
    model = HiddenParam(TASK.vocab_size, bad_call=4, bad_grad=math.inf)
    with pytest.raises(NonFiniteWeightsError, match=r"after step 4 .*in steps 1-4\)"):
        train(model, TASK, cfg(tmp_path))
    assert list_checkpoints(tmp_path) == []


def test_after_the_refusal_the_run_resumes_from_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteWeightsError):
        train(HiddenParam(TASK.vocab_size, bad_call=6, bad_grad=math.inf), TASK, cfg(tmp_path))
    path, state = newest_good_checkpoint(tmp_path)  # no warning: nothing bad on disk
    assert path.name == "step_0000004" and state["step"] == 4
    model = HiddenParam(TASK.vocab_size, bad_call=-1, bad_grad=0.0)  # the bad gradient does not recur
    result = train(model, TASK, cfg(tmp_path, resume=True))
    assert result.step == 12 and (tmp_path / "result.json").exists()


def test_interrupt_checkpoint_is_checked_too(tmp_path):
    model = HiddenParam(TASK.vocab_size, bad_call=2, bad_grad=math.inf)
    with pytest.raises(NonFiniteWeightsError, match=r"after step 3 .*in steps 1-3\)"):
        train(model, TASK, cfg(tmp_path, interrupt_after=3))
    assert list_checkpoints(tmp_path) == []


def test_save_checkpoint_refuses_nonfinite_weights(tmp_path):
    model = TinyLM(TASK.vocab_size)
    with torch.no_grad():
        model.norm.weight[2] = float("inf")
    with pytest.raises(CheckpointError, match=r"not saving .*step_0000005: tensor norm.weight holds non-finite"):
        save_checkpoint(tmp_path, 5, model, {"step": 5, "optimizer": {}})
    assert not (tmp_path / "checkpoints").exists()


def test_save_checkpoint_refuses_nonfinite_optimizer_state_and_keeps_older(tmp_path):
    model = TinyLM(TASK.vocab_size)
    save_checkpoint(tmp_path, 1, model, {"step": 1, "optimizer": {}}, keep=1)
    state = {"step": 2, "optimizer": {"state": {0: {"exp_avg_sq": torch.tensor([float("nan")])}}}}
    with pytest.raises(CheckpointError, match=r"optimizer state optimizer.state.0.exp_avg_sq holds non-finite"):
        save_checkpoint(tmp_path, 2, model, state, keep=1)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]  # keep=1 did not prune the good one


# ---- the ensemble path: per member, the message train() gives --------------------------------

ENS_TASK = make_task("copy", vocab=5, copy_len=6)
MODEL = dict(d_model=16, n_layer=2, vocab_size=ENS_TASK.vocab_size, tie_embeddings=False,
             ssm_cfg=dict(layer="Mamba1", d_state=4))
BAD_UPDATE = 6


def pad_row() -> int:
    config = MambaConfig(**MODEL)
    assert config.padded_vocab_size > config.vocab_size, "needs an embedding row no token looks up"
    return config.padded_vocab_size - 1


def build(seed):
    torch.manual_seed(seed)
    return MambaLM(MambaConfig(**MODEL))


def ens_cfg(out, seed):
    return TrainConfig(steps=12, batch_size=4, eval_every=2, checkpoint_every=4, eval_batches=1, progress=False,
                       device="cpu", seed=seed, out_dir=str(out), grad_clip=None, keep_checkpoints=5)


def test_ensemble_member_with_nan_weights_stops_as_train_does(tmp_path, monkeypatch):
    row = pad_row()  # the embedding row of a padding id: no lookup, no gradient reaches the loss

    # lone run: NaN poked into that row right after update BAD_UPDATE
    real = loop.build_optimizer

    def poisoned(model, config):
        opt = real(model, config)
        step, count = opt.step, [0]

        def step_then_poison(*a, **k):
            out = step(*a, **k)
            count[0] += 1
            if count[0] == BAD_UPDATE:
                with torch.no_grad():
                    model.backbone.embedding.weight[row, 0] = float("nan")
            return out
        opt.step = step_then_poison
        return opt

    monkeypatch.setattr(loop, "build_optimizer", poisoned)
    with pytest.raises(NonFiniteWeightsError) as lone:
        train(build(1), ENS_TASK, ens_cfg(tmp_path / "lone", seed=1))
    monkeypatch.setattr(loop, "build_optimizer", real)

    # ensemble of three, member 1 poisoned the same way in its stacked slot
    real_step = ens_train.StackedAdamW.step

    def stacked_step(self, factors):
        real_step(self, factors)
        if self.steps_done == BAD_UPDATE:
            for name, p in self.params:
                if name == "backbone.embedding.weight":
                    p.data[1, row, 0] = float("nan")

    monkeypatch.setattr(ens_train.StackedAdamW, "step", stacked_step)
    outs = [tmp_path / "ens" / str(k) for k in range(3)]
    models = [build(s) for s in (0, 1, 2)]
    results = train_ensemble(models, ENS_TASK, [ens_cfg(o, seed=s) for o, s in zip(outs, (0, 1, 2))])

    err = results[1]
    assert isinstance(err, NonFiniteWeightsError), err
    assert "tensor backbone.embedding.weight after step 8" in str(err) and "steps 5-8" in str(err)
    assert str(err).replace(str(outs[1]), "<out>") == str(lone.value).replace(str(tmp_path / "lone"), "<out>")
    assert [s for s, _ in list_checkpoints(outs[1])] == [4] == [s for s, _ in list_checkpoints(tmp_path / "lone")]
    assert not (outs[1] / "result.json").exists()
    # its model holds its last good checkpoint's weights, finite
    want = build(1)
    load_checkpoint(list_checkpoints(outs[1])[-1][1], want)
    for (name, got), (_, ref) in zip(models[1].named_parameters(), want.named_parameters()):
        torch.testing.assert_close(got, ref, rtol=0, atol=0, msg=name)
    # the other members finish
    for k in (0, 2):
        assert results[k].step == 12 and (outs[k] / "result.json").exists()
        assert [s for s, _ in list_checkpoints(outs[k])] == [4, 8, 12]
