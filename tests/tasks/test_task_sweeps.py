"""The new task formats through the trainers and sweeps: copy_jelassi's varying scored counts
in train() and the ensemble trainer, its length knob and [eval] lengths in a sweep."""
import csv

import pytest
import tomllib
import torch

from mimetic.ensemble.train import train_ensemble
from mimetic.models import MambaConfig, MambaLM
from mimetic.tasks import JelassiCopyTask, make_task
from mimetic.train import TrainConfig, train
from mimetic.train.loop import batch_for_step
from mimetic.train.sweep import parse_sweep, run_sweep
from mimetic.train.sweep.rows import length_evals

from .oracles import OracleModel
from .test_copy_jelassi import WrongAfter

TASK = JelassiCopyTask(vocab=5, min_len=2, max_len=6, context_len=24)


def mamba(seed: int) -> MambaLM:
    torch.manual_seed(seed)
    return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=TASK.vocab_size,
                               ssm_cfg=dict(layer="Mamba1", d_state=4)))


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(steps=6, batch_size=4, eval_every=3, eval_batches=1, progress=False,
                                 device="cpu", lr=3e-3, warmup_steps=1), **kw})


def test_batch_for_step_is_a_pure_function_with_varying_scored_counts():
    a = [batch_for_step(TASK, cfg(seed=0), s) for s in range(8)]
    b = [batch_for_step(TASK, cfg(seed=0), s) for s in range(8)]
    assert all(torch.equal(u, v) for x, y in zip(a, b) for u, v in zip(x, y))
    assert {x[0].shape for x in a} == {(4, 24)}
    assert len({int(x[2].sum()) for x in a}) > 1, "scored token counts vary from step to step"


def test_ensemble_training_equals_separate_runs_on_copy_jelassi():
    # The ensemble's per-member loss divides by each member's own scored count; with counts that
    # vary per step and per data seed, it must still equal train() member by member.
    configs = [cfg(seed=0), cfg(seed=1, lr=1e-2)]
    separate = [train(mamba(i), TASK, c) for i, c in enumerate(configs)]
    together = train_ensemble([mamba(0), mamba(1)], TASK, configs, cuda_graph=False)
    for ref, got in zip(separate, together):
        assert not isinstance(got, Exception)
        assert len(got.history) == len(ref.history) == 2
        for r, g in zip(ref.history, got.history):
            for key in ("loss", "token_acc", "seq_acc", "train_loss"):
                assert g[key] == pytest.approx(r[key], abs=1e-5), key


SWEEP = {
    "sweep": {"name": "jelassi_tiny"},
    "grid": {"task": ["copy_jelassi"], "init": ["default"], "layer": ["Mamba1"], "d_state": [4],
             "length": [6, 12], "seed": [0]},
    "tasks": {"copy_jelassi": {"vocab": 5, "min_len": 2}},
    "model": {"d_model": 16, "n_layer": 1},
    "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "eval_batches": 1, "warmup_steps": 0},
    "eval": {"lengths": [1, 6, 30], "batches": 1, "batch_size": 4},
}

SWEEP_TOML = """
[sweep]
name = "jelassi_tiny"
[grid]
task = ["copy_jelassi"]
init = ["default"]
layer = ["Mamba1"]
d_state = [4]
length = [6, 12]
seed = [0]
[tasks.copy_jelassi]
vocab = 5
min_len = 2
[model]
d_model = 16
n_layer = 1
[train]
steps = 2
batch_size = 4
eval_every = 2
eval_batches = 1
warmup_steps = 0
[eval]
lengths = [1, 6, 30]
batches = 1
batch_size = 4
"""


def test_sweep_length_axis_is_max_len_and_eval_lengths_are_exact_lengths():
    sweep = parse_sweep(SWEEP)
    tasks = [sweep.task_for(p) for p in sweep.points()]
    assert [(t.min_len, t.max_len, t.seq_len) for t in tasks] == [(2, 6, 220), (2, 12, 220)]
    # An [eval] length below min_len or beyond max_len is valid: it tests exactly that length.
    ev = tasks[0].length_eval_task(1)
    assert (ev.min_len, ev.max_len, ev.packed) == (1, 1, False)


class WithParam(torch.nn.Module):
    """A model wrapper with one parameter (length_evals reads the device from it)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.p = inner, torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.inner(x)


def test_length_evals_columns_are_exact_match_and_char_accuracy():
    sweep = parse_sweep(SWEEP)
    point = sweep.points()[0]
    task = sweep.task_for(point)
    tcfg = sweep.train_config(point, "/unused")
    oracle = length_evals(sweep, WithParam(OracleModel(task)), task, tcfg)
    assert oracle == {f"gen_{k}@{n}": 1.0 for n in (1, 6, 30) for k in ("token_acc", "seq_acc")}
    k = 4  # right on the first 4 letters of every string, wrong after
    out = length_evals(sweep, WithParam(WrongAfter(task, k)), task, tcfg)
    assert out["gen_seq_acc@1"] == 1.0 and out["gen_token_acc@1"] == 1.0
    assert out["gen_seq_acc@6"] == 0.0 and out["gen_token_acc@6"] == pytest.approx(4 / 6)
    assert out["gen_seq_acc@30"] == 0.0 and out["gen_token_acc@30"] == pytest.approx(4 / 30)


def test_sweep_end_to_end_on_copy_jelassi(tmp_path):
    path = tmp_path / "jelassi_tiny.toml"
    path.write_text(SWEEP_TOML)
    assert parse_sweep(tomllib.loads(SWEEP_TOML)).points() == parse_sweep(SWEEP).points()
    res = run_sweep(path, tmp_path / "out", progress=False, plot=False, device="cpu")
    rows = list(csv.DictReader(res.csv_path.open()))
    assert len(rows) == 2 and {r["length"] for r in rows} == {"6", "12"}
    for r in rows:
        for n in (1, 6, 30):
            assert 0.0 <= float(r[f"gen_seq_acc@{n}"]) <= float(r[f"gen_token_acc@{n}"]) <= 1.0
        assert r["seq_len"] == "220"


def test_mamba_table_tasks_through_a_sweep_config():
    data = {**SWEEP, "grid": {**SWEEP["grid"], "task": ["induction_heads"], "length": [256]},
            "tasks": {"induction_heads": {"vocab_size": 16, "data_vocab": 14}},
            "eval": {"lengths": [64, 2**20], "batches": 1, "batch_size": 1}}
    sweep = parse_sweep(data)
    t = sweep.task_for(sweep.points()[0])
    assert (t.seq_len, t.vocab_size, t.data_vocab) == (256, 16, 14)
    assert t.length_eval_task(2**20).seq_len == 2**20
    assert make_task("selective_copy").length_eval_task(8192).seq_len == 8192
