import json
import math

import pytest
import torch

from mimetic.tasks import make_task
from mimetic.train import (
    NonFiniteLossError,
    TrainConfig,
    latest_checkpoint,
    lr_at,
    param_groups,
    read_metrics,
    train,
)

from .tiny import LookbackLM, TinyLM

COPY = dict(vocab=6, copy_len=4)


def cfg(**kw) -> TrainConfig:
    base = dict(steps=24, batch_size=16, lr=3e-3, warmup_steps=4, eval_every=8, eval_batches=2, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_run_different_seed_different_run():
    task = make_task("copy", **COPY)
    runs = []
    for seed in (0, 0, 1):
        model = LookbackLM(task.vocab_size, seed=0)
        res = train(model, task, cfg(seed=seed))
        runs.append((res, params(model)))
    (a, pa), (b, pb), (c, pc) = runs
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert [r["train_loss"] for r in a.history] != [r["train_loss"] for r in c.history]


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    task = make_task("copy", **COPY)
    ref_model = LookbackLM(task.vocab_size)
    ref = train(ref_model, task, cfg(out_dir=str(tmp_path / "ref"), checkpoint_every=4))

    out = str(tmp_path / "split")
    m1 = LookbackLM(task.vocab_size)
    part = train(m1, task, cfg(out_dir=out, checkpoint_every=4, interrupt_after=10))
    assert part.interrupted and part.step == 10
    assert not (tmp_path / "split" / "result.json").exists()
    # A fresh process would build a fresh model: use a differently initialised one to prove
    # that the weights come from the checkpoint.
    m2 = LookbackLM(task.vocab_size, seed=99)
    res = train(m2, task, cfg(out_dir=out, checkpoint_every=4, resume=True))
    assert res.step == 24 and not res.interrupted
    pr, p2 = params(ref_model), params(m2)
    assert all(torch.equal(pr[k], p2[k]) for k in pr)
    assert [r["loss"] for r in res.history] == [r["loss"] for r in ref.history]
    # the metrics file has each eval exactly once
    assert [r["step"] for r in read_metrics(out)] == [8, 16, 24]
    # resuming a finished run returns its result without training
    again = train(LookbackLM(task.vocab_size), task, cfg(out_dir=out, resume=True))
    assert again.to_dict() == res.to_dict()


def test_checkpoint_contents_are_weights_only_loadable(tmp_path):
    task = make_task("copy", **COPY)
    train(TinyLM(task.vocab_size), task, cfg(out_dir=str(tmp_path), checkpoint_every=4, keep_checkpoints=2))
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["step_0000020", "step_0000024"], "only the newest two kept, no temp dirs left"
    state = torch.load(latest_checkpoint(tmp_path) / "state.pt", weights_only=True)
    assert state["step"] == 24 and state["data"]["next_step"] == 24
    assert isinstance(state["rng"]["torch"], torch.Tensor)
    assert state["optimizer"]["state"], "optimizer moments saved"
    from safetensors.torch import load_file

    weights = load_file(str(latest_checkpoint(tmp_path) / "model.safetensors"))
    assert "embedding.weight" in weights


def test_metrics_jsonl_lines(tmp_path):
    task = make_task("copy", **COPY)
    train(TinyLM(task.vocab_size), task, cfg(out_dir=str(tmp_path)))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [r["step"] for r in recs] == [8, 16, 24]
    for r in recs:
        assert {"step", "loss", "token_acc", "seq_acc", "lr", "tokens_per_s", "elapsed"} <= set(r)
        assert r["tokens_per_s"] > 0 and 0 <= r["token_acc"] <= 1
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["step"] == 24 and result["final"]["step"] == 24


def test_learns_copy_and_stops_early_at_target():
    task = make_task("copy", **COPY)
    model = LookbackLM(task.vocab_size, dropout=0.0)
    res = train(model, task, cfg(steps=600, lr=3e-3, batch_size=32, eval_every=5, target_acc=0.99, eval_batches=4))
    assert res.stopped_early and res.steps_to_target is not None and res.step == res.steps_to_target < 600
    assert res.final["token_acc"] >= 0.99 and res.history[0]["token_acc"] < 0.9


def test_existing_checkpoints_without_resume_is_an_error(tmp_path):
    task = make_task("copy", **COPY)
    train(TinyLM(task.vocab_size), task, cfg(out_dir=str(tmp_path), steps=8))
    with pytest.raises(ValueError, match="resume=True"):
        train(TinyLM(task.vocab_size), task, cfg(out_dir=str(tmp_path), steps=8))


class NaNAfter(TinyLM):
    """Returns NaN logits from the ``bad_call``-th training forward on."""

    def __init__(self, vocab_size, bad_call):
        super().__init__(vocab_size)
        self.calls, self.bad_call = 0, bad_call

    def forward(self, input_ids):
        out = super().forward(input_ids)
        if self.training:
            self.calls += 1
            if self.calls > self.bad_call:
                out = out * float("nan")
        return out


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    task = make_task("copy", **COPY)
    model = NaNAfter(task.vocab_size, bad_call=13)
    with pytest.raises(NonFiniteLossError, match=r"at step 13\b.*step_0000012"):
        train(model, task, cfg(out_dir=str(tmp_path), checkpoint_every=4))
    assert latest_checkpoint(tmp_path).name == "step_0000012"
    assert all(torch.isfinite(p).all() for p in model.parameters()), "bad step did not update"


def test_weight_decay_groups():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.in_proj = torch.nn.Linear(4, 8)
            self.norm = torch.nn.LayerNorm(8)
            self.A_log = torch.nn.Parameter(torch.zeros(8, 4))
            self.D = torch.nn.Parameter(torch.ones(8))
            self.dt_bias = torch.nn.Parameter(torch.zeros(8))
            self.conv_weight = torch.nn.Parameter(torch.zeros(8, 1, 4))

    m = M()
    decay, no_decay = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    assert ids == {id(m.in_proj.weight), id(m.conv_weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(m.in_proj.bias), id(m.norm.weight), id(m.norm.bias), id(m.A_log), id(m.D), id(m.dt_bias)
    }


def test_lr_schedule_warmup_then_cosine():
    c = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, c) == pytest.approx(0.1)
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, c) == pytest.approx(0.1)
    lrs = [lr_at(s, c) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_config_validation():
    with pytest.raises(ValueError, match="steps=0"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="unknown TrainConfig key.*stepz"):
        TrainConfig.from_dict({"stepz": 3})


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_mambalm_end_to_end_resume_is_exact(tmp_path, layer):
    # The real model: tied embeddings (shared tensors in safetensors), A_log/D/dt_bias groups.
    from mimetic import MambaConfig, MambaLM
    from mimetic.train import wants_decay

    task = make_task("copy", vocab=6, copy_len=4)
    ssm = {"layer": layer, "d_state": 4, **({"headdim": 8, "chunk_size": 16} if layer == "Mamba2" else {})}

    def model():
        torch.manual_seed(0)
        return MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=task.vocab_size, ssm_cfg=ssm, init="mimetic"))

    names = {n for n, p in model().named_parameters() if not wants_decay(n, p)}
    assert any(n.endswith("A_log") for n in names) and any(n.endswith(".D") for n in names)

    c = dict(steps=8, eval_every=4, checkpoint_every=2, batch_size=8)
    ref = model()
    train(ref, task, cfg(out_dir=str(tmp_path / "ref"), **c))
    train(model(), task, cfg(out_dir=str(tmp_path / "split"), interrupt_after=5, **c))
    resumed = MambaLM(ref.config)
    res = train(resumed, task, cfg(out_dir=str(tmp_path / "split"), resume=True, **c))
    assert res.step == 8
    pr, p2 = params(ref), params(resumed)
    assert all(torch.equal(pr[k], p2[k]) for k in pr)
    assert resumed.lm_head.weight is resumed.backbone.embedding.weight, "tying survives loading"


def test_resume_of_finished_run_loads_final_weights(tmp_path):
    task = make_task("copy", **COPY)
    trained = TinyLM(task.vocab_size)
    train(trained, task, cfg(out_dir=str(tmp_path)))
    fresh = TinyLM(task.vocab_size, seed=5)
    train(fresh, task, cfg(out_dir=str(tmp_path), resume=True))
    pt, pf = params(trained), params(fresh)
    assert all(torch.equal(pt[k], pf[k]) for k in pt)


def test_tensorboard_optional(tmp_path):
    task = make_task("copy", **COPY)
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="TensorBoard is not installed"):
            train(TinyLM(task.vocab_size), task, cfg(out_dir=str(tmp_path), tensorboard=True, steps=8))
    else:
        train(TinyLM(task.vocab_size), task, cfg(out_dir=str(tmp_path), tensorboard=True, steps=8))
        assert any((tmp_path / "tensorboard").iterdir())
    assert (tmp_path / "metrics.jsonl").exists()


class Opaque(torch.nn.Module):
    """A MambaLM that train() cannot see through: logits at every position, masked after."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids):
        return self.inner(input_ids)


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_head_at_scored_positions_gives_the_full_head_run(layer):
    """train() computes a MambaLM's LM head only at the scored positions (MQAR scores 3 of 20):
    the run equals the one that takes the logits everywhere and masks them (``logits[mask]``)."""
    from mimetic import MambaConfig, MambaLM

    task = make_task("mqar", vocab_size=40, seq_len=20, num_kv_pairs=3)
    ssm = {"layer": layer, "d_state": 4, **({"headdim": 8, "chunk_size": 8} if layer == "Mamba2" else {})}
    torch.manual_seed(0)
    fast = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=task.vocab_size, ssm_cfg=ssm, init="mimetic"))
    slow = Opaque(MambaLM(fast.config))
    slow.inner.load_state_dict(fast.state_dict())
    c = cfg(steps=12, eval_every=4, batch_size=8, lr=1e-2)
    a, b = train(fast, task, c), train(slow, task, c)
    for ra, rb in zip(a.history, b.history, strict=True):
        for key in ("loss", "token_acc", "seq_acc", "train_loss"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (key, ra["step"])
    assert a.history[-1]["train_loss"] != a.history[0]["train_loss"]  # it trained
    for (name, p), q in zip(fast.named_parameters(), slow.inner.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_positions_must_match_the_batch():
    from mimetic import MambaConfig, MambaLM

    model = MambaLM(MambaConfig(d_model=8, n_layer=1, vocab_size=10, ssm_cfg={"layer": "Mamba1", "d_state": 2}))
    ids = torch.zeros(2, 5, dtype=torch.long)
    assert model(ids, positions=torch.tensor([[0, 4], [1, 1]])).shape == (2, 2, 10)
    with pytest.raises(ValueError, match="positions must be"):
        model(ids, positions=torch.zeros(3, 2, dtype=torch.long))
