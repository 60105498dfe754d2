import pytest
import torch

from mimetic.tasks import evaluate, make_task

from .oracles import OracleModel, RandomModel
from .test_task_formats import SMALL


@pytest.mark.parametrize("name", sorted(SMALL))
def test_oracle_scores_perfectly(name):
    task = make_task(name, **SMALL[name])
    out = evaluate(OracleModel(task), task, num_batches=3, batch_size=16, seed=0)
    assert out["token_acc"] == 1.0 and out["seq_acc"] == 1.0
    assert out["loss"] < 1e-3


@pytest.mark.parametrize("name", sorted(SMALL))
def test_random_model_scores_low(name):
    task = make_task(name, **SMALL[name])
    out = evaluate(RandomModel(task.vocab_size), task, num_batches=4, batch_size=32, seed=0)
    assert out["token_acc"] < 0.3
    assert out["loss"] > 1.0
    if name != "induction_heads":  # one scored token per sequence there
        assert out["seq_acc"] < 0.05


def test_partially_right_model_token_vs_seq_acc():
    # Right on every scored token except the last copied one: token_acc = (n-1)/n, seq_acc = 0.
    task = make_task("copy", vocab=8, copy_len=10)
    oracle = OracleModel(task)

    class AlmostOracle(torch.nn.Module):
        def forward(self, x):
            logits = oracle(x)
            logits[:, -1] = logits[:, -1].roll(1, dims=-1)
            return logits

    out = evaluate(AlmostOracle(), task, num_batches=2, batch_size=8, seed=1)
    assert out["token_acc"] == pytest.approx(0.9)
    assert out["seq_acc"] == 0.0


def test_evaluate_is_deterministic_and_restores_mode():
    task = make_task("induction_heads", **SMALL["induction_heads"])
    model = torch.nn.Sequential(torch.nn.Embedding(task.vocab_size, 8), torch.nn.Linear(8, task.vocab_size))
    model.train()
    a = evaluate(model, task, num_batches=2, batch_size=8, seed=3)
    b = evaluate(model, task, num_batches=2, batch_size=8, seed=3)
    assert a == b and model.training


@pytest.mark.parametrize("name", ["mqar", "selective_copy", "induction_heads", "copy"])
def test_head_at_scored_positions_gives_the_full_logits_metrics(name):
    """evaluate(at_scored=True) (a MambaLM's head at the scored slots only) gives the metrics
    of the full (B, L, V) logits: the same hits, the loss within fp32 round-off."""
    from mimetic.models import MambaConfig, MambaLM

    task = make_task(name, **SMALL[name])
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=task.vocab_size,
                                ssm_cfg={"layer": "Mamba1", "d_state": 4}))
    full = evaluate(model, task, num_batches=3, batch_size=8, seed=2)
    slots = evaluate(model, task, num_batches=3, batch_size=8, seed=2, at_scored=True)
    assert slots["token_acc"] == full["token_acc"] and slots["seq_acc"] == full["seq_acc"]
    assert slots["loss"] == pytest.approx(full["loss"], rel=1e-6)
