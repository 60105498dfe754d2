"""Data-parallel train() over 2 processes (gloo, CPU), as torchrun starts them: the same losses
and weights as one process with the same global batch, for DDP and FSDP2; files from rank 0
only; checkpoints that resume on another world size (2 -> 1 and 1 -> 2)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mimetic.models import MambaConfig, MambaLM
from mimetic.tasks import make_task
from mimetic.train import NonFiniteLossError, TrainConfig, latest_checkpoint, load_checkpoint, read_metrics, train
from mimetic.train.distributed import shutdown

from .tiny import LookbackLM, TinyLM

TASK = dict(vocab=6, copy_len=4)
ROOT = Path(__file__).resolve().parents[2]


def cfg(out, **kw) -> TrainConfig:
    base = dict(steps=8, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=4, eval_batches=1,
                checkpoint_every=2, progress=False, device="cpu", out_dir=str(out))
    base.update(kw)
    return TrainConfig(**base)


def lookback(task):
    return LookbackLM(task.vocab_size, dropout=0.0)  # dropout masks are drawn per rank


def mamba(task):
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=task.vocab_size,
                               ssm_cfg={"layer": "Mamba2", "d_state": 4, "headdim": 8}, init="mimetic"))


class NaNOnRankOne(TinyLM):
    """NaN logits on rank 1 alone (its rows of the batch) from the 3rd training forward on."""

    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.calls = 0

    def forward(self, input_ids):
        out = super().forward(input_ids)
        if self.training:
            self.calls += 1
            if self.calls >= 3 and os.environ.get("RANK") == "1":
                out = out * float("nan")
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, root: str) -> None:
    """One process of a torchrun-like job: the env torchrun sets, then plain train() calls."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    root = Path(root)
    task = make_task("copy", **TASK)
    train(lookback(task), task, cfg(root / "ddp"))
    train(lookback(task), task, cfg(root / "ddp_split", interrupt_after=4))
    sharded = mamba(task)
    train(sharded, task, cfg(root / "fsdp", parallel="fsdp"))
    assert all(hasattr(p, "full_tensor") for p in sharded.parameters())  # FSDP2 did shard it
    train(mamba(task), task, cfg(root / "one_then_two", parallel="fsdp", resume=True))
    assert dist.get_world_size() == 2  # train() joined torchrun's group from the environment
    try:
        train(NaNOnRankOne(task.vocab_size), task, cfg(root / "nan"))
    except NonFiniteLossError as e:
        (root / f"nan_rank{rank}.txt").write_text(str(e))
    shutdown()  # as the CLI leaves the group (a bare destroy_process_group could abort at exit)
    assert not dist.is_initialized()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Reference one-process runs, a one-process run interrupted at step 4, then the 2-process
    job of ``_rank``; returns the folder holding every run."""
    root = tmp_path_factory.mktemp("dist")
    task = make_task("copy", **TASK)
    torch.set_num_threads(1)
    train(lookback(task), task, cfg(root / "ref"))
    train(mamba(task), task, cfg(root / "ref_mamba"))
    train(mamba(task), task, cfg(root / "one_then_two", interrupt_after=4))
    mp.start_processes(_rank, args=(2, _free_port(), str(root)), nprocs=2, start_method="spawn")
    return root


def _weights(run: Path, model) -> dict:
    load_checkpoint(latest_checkpoint(run), model)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_history(a: Path, b: Path) -> None:
    ra, rb = read_metrics(a), read_metrics(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [4, 8]
    for x, y in zip(ra, rb):
        for k in ("train_loss", "loss", "token_acc"):
            assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-6), k


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def test_ddp_two_processes_match_one(runs):
    task = make_task("copy", **TASK)
    _same_history(runs / "ref", runs / "ddp")
    _same_weights(_weights(runs / "ref", lookback(task)), _weights(runs / "ddp", lookback(task)))
    result = json.loads((runs / "ddp" / "result.json").read_text())
    assert result["tokens"] == json.loads((runs / "ref" / "result.json").read_text())["tokens"]
    # rank 0 alone wrote: one line per eval, the kept checkpoints, no leftovers
    assert len((runs / "ddp" / "metrics.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in (runs / "ddp" / "checkpoints").iterdir()) == ["step_0000006", "step_0000008"]


def test_fsdp_two_processes_match_one(runs):
    task = make_task("copy", **TASK)
    _same_history(runs / "ref_mamba", runs / "fsdp")
    _same_weights(_weights(runs / "ref_mamba", mamba(task)), _weights(runs / "fsdp", mamba(task)))


def test_checkpoints_resume_on_another_world_size(runs):
    task = make_task("copy", **TASK)
    # 1 -> 2 (and DDP-less -> FSDP2): the 2-process job finished the interrupted one-process run
    _same_history(runs / "ref_mamba", runs / "one_then_two")
    _same_weights(_weights(runs / "ref_mamba", mamba(task)), _weights(runs / "one_then_two", mamba(task)))
    # 2 -> 1: the DDP run interrupted at step 4, finished here in one process
    assert not (runs / "ddp_split" / "result.json").exists()
    model = lookback(task)
    train(model, task, cfg(runs / "ddp_split", resume=True))
    _same_history(runs / "ref", runs / "ddp_split")
    _same_weights(_weights(runs / "ref", lookback(task)), {k: v for k, v in model.state_dict().items()})


def test_batch_not_divisible_by_world_size_is_one_line():
    from mimetic.train.distributed import local_batch_size

    assert local_batch_size(8, 2) == 4
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by the 4 processes"):
        local_batch_size(6, 4)


def test_torchrun_cli_train(tmp_path):
    """``torchrun --nproc_per_node 2 -m mimetic.cli train``: trains, rank 0 saves the model."""
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "mimetic.cli", "train", "--steps", "4", "--eval-every", "2",
           "--batch-size", "4", "--d-model", "16", "--n-layer", "1", "--d-state", "4", "--headdim", "8",
           "--task-arg", "copy_len=3", "--device", "cpu", "--out", str(out), "--parallel", "fsdp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("step 4: token_acc=") == 1  # printed by rank 0 only
    assert MambaLM.from_pretrained(out / "model") is not None
    assert [r["step"] for r in read_metrics(out)] == [2, 4]


def test_nan_in_one_ranks_rows_stops_every_rank_at_that_step(runs):
    messages = [(runs / f"nan_rank{r}.txt").read_text() for r in (0, 1)]
    for m in messages:  # step 2 = the third step; both name the last good checkpoint
        assert "non-finite loss (nan) at step 2" in m and "step_0000002" in m, m
