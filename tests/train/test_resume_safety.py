"""Nothing lost, nothing mixed (issue 14): resume refuses changed settings, a finished run
resumed with more steps trains on, a torn metrics line or a bad newest checkpoint is
recovered from, checkpoints are checksummed and checked for NaN, one run per folder."""
import json
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import save_file

from mimetic.tasks import make_task
from mimetic.train import TrainConfig, latest_checkpoint, load_checkpoint, read_metrics, save_checkpoint, train
from mimetic.train.checkpoint import CheckpointError, list_checkpoints, newest_good_checkpoint
from mimetic.train.resume import RunLockedError, run_lock

from .tiny import TinyLM

COPY = dict(vocab=6, copy_len=4)
TASK = make_task("copy", **COPY)


def cfg(out, **kw) -> TrainConfig:
    base = dict(steps=8, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=2, eval_batches=1,
                progress=False, out_dir=str(out), device="cpu")
    return TrainConfig(**{**base, **kw})


def interrupted(out, **kw):
    """A run in ``out`` stopped after step 4 (checkpoints at 2 and 4)."""
    r = train(TinyLM(TASK.vocab_size), TASK, cfg(out, interrupt_after=4, **kw))
    assert r.interrupted and r.step == 4
    return r


def numbers(history):
    """The computed part of eval records (timings differ between runs)."""
    return [{k: r[k] for k in ("step", "loss", "token_acc", "seq_acc", "train_loss", "lr")} for r in history]


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- resume refuses a changed setting, naming it --------------------------------------------

@pytest.mark.parametrize("field, value", [("lr", 1e-2), ("batch_size", 8), ("steps", 12), ("weight_decay", 0.0),
                                          ("grad_clip", None), ("eval_batches", 2)])
def test_resume_with_changed_train_setting_is_refused(tmp_path, field, value):
    interrupted(tmp_path)
    with pytest.raises(ValueError, match=rf"cannot resume .*step_0000004: {field} was .*, now {value!r}") as e:
        train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path, resume=True, **{field: value}))
    assert "\n" not in str(e.value) and "allow_changed" in str(e.value)
    assert not (tmp_path / "result.json").exists()


def test_resume_with_changed_task_is_refused(tmp_path):
    interrupted(tmp_path)
    longer = make_task("copy", vocab=6, copy_len=5)
    with pytest.raises(ValueError, match="task.copy_len was 4, now 5"):
        train(TinyLM(TASK.vocab_size), longer, cfg(tmp_path, resume=True))


def test_resume_with_changed_model_init_is_refused(tmp_path):
    from mimetic import MambaConfig, MambaLM

    def lm(init):
        torch.manual_seed(0)
        return MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=TASK.vocab_size, init=init,
                                   ssm_cfg={"layer": "Mamba2", "d_state": 4, "headdim": 8}))

    train(lm("mimetic"), TASK, cfg(tmp_path, interrupt_after=2))
    with pytest.raises(ValueError, match="model.init was 'mimetic', now 'default'"):
        train(lm("default"), TASK, cfg(tmp_path, resume=True))


def test_allowed_change_resumes_with_a_warning(tmp_path):
    interrupted(tmp_path)
    with pytest.warns(UserWarning, match=r"changed settings \(allowed\): lr: 0.003 -> 0.01"):
        r = train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path, resume=True, lr=1e-2, allow_changed=["lr"]))
    assert r.step == 8 and not r.interrupted
    # the checkpoints written after the change record it: resuming again needs no permission
    train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path, resume=True, lr=1e-2))


def test_allow_changed_true_allows_any(tmp_path):
    interrupted(tmp_path)
    with pytest.warns(UserWarning, match="batch_size: 4 -> 8"):
        r = train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path, resume=True, batch_size=8, allow_changed=True))
    assert r.step == 8


def test_neutral_settings_may_change(tmp_path):
    interrupted(tmp_path, keep_checkpoints=2)
    r = train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path, resume=True, keep_checkpoints=3, checkpoint_every=4))
    assert r.step == 8


def test_finished_run_with_changed_setting_is_refused(tmp_path):
    train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path))
    with pytest.raises(ValueError, match="lr was 0.003, now 0.01"):
        train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path, resume=True, lr=1e-2))


# ---- a finished run resumed with more steps trains on ---------------------------------------

def test_finished_run_resumed_with_more_steps_continues(tmp_path):
    first = train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path))
    assert first.step == 8
    model = TinyLM(TASK.vocab_size, seed=5)
    more = train(model, TASK, cfg(tmp_path, resume=True, steps=12))
    assert more.step == 12 and not more.interrupted
    assert [r["step"] for r in more.history] == [2, 4, 6, 8, 10, 12]
    assert more.history[:4] == first.history
    assert json.loads((tmp_path / "result.json").read_text())["step"] == 12
    assert [r["step"] for r in read_metrics(tmp_path)] == [2, 4, 6, 8, 10, 12]
    assert list_checkpoints(tmp_path)[-1][0] == 12
    # the same or fewer steps again: the stored result, nothing trained
    again = train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path, resume=True, steps=12))
    assert again.history == more.history


def test_finished_run_resumed_with_same_steps_returns_stored_result(tmp_path):
    first = train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path))
    model = TinyLM(TASK.vocab_size, seed=5)
    again = train(model, TASK, cfg(tmp_path, resume=True))
    assert again.to_dict() == json.loads(json.dumps(first.to_dict()))


# ---- torn metrics line, bad newest checkpoint -----------------------------------------------

def test_torn_last_metrics_line_is_recovered(tmp_path):
    ref = train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path / "ref"))
    interrupted(tmp_path / "run")
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as f:  # a kill (or a full disk) in the middle of an append
        f.write('{"step": 6, "loss": 1.2')
    with pytest.warns(UserWarning, match="metrics.jsonl:3: dropped a torn last line"):
        assert [r["step"] for r in read_metrics(tmp_path / "run")] == [2, 4]
    with pytest.warns(UserWarning, match="torn last line"):
        res = train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path / "run", resume=True))
    assert numbers(res.history) == numbers(ref.history)
    assert numbers(read_metrics(tmp_path / "run")) == numbers(read_metrics(tmp_path / "ref"))  # rewritten whole


def test_bad_metrics_line_in_the_middle_names_file_and_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 2}\n{"step": 4, oops\n{"step": 6}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics record"):
        read_metrics(tmp_path)


def test_truncated_newest_checkpoint_falls_back_to_the_older_one(tmp_path):
    ref_model = TinyLM(TASK.vocab_size)
    ref = train(ref_model, TASK, cfg(tmp_path / "ref"))
    interrupted(tmp_path / "run")
    weights = latest_checkpoint(tmp_path / "run") / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    model = TinyLM(TASK.vocab_size, seed=9)
    with pytest.warns(UserWarning, match=r"skipped bad checkpoint.*resuming from .*step_0000002.*step_0000004"):
        res = train(model, TASK, cfg(tmp_path / "run", resume=True))
    assert numbers(res.history) == numbers(ref.history)  # steps 3-4 retrained, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(params(model).values(), params(ref_model).values()))


def test_finished_run_with_bad_final_checkpoint_retrains_the_missing_steps(tmp_path):
    ref_model = TinyLM(TASK.vocab_size)
    ref = train(ref_model, TASK, cfg(tmp_path, keep_checkpoints=2))
    state = latest_checkpoint(tmp_path) / "state.pt"
    state.write_bytes(state.read_bytes()[:50])
    model = TinyLM(TASK.vocab_size, seed=9)
    with pytest.warns(UserWarning, match="step_0000008/state.pt"):
        res = train(model, TASK, cfg(tmp_path, resume=True))
    assert numbers(res.history) == numbers(ref.history)
    assert all(torch.equal(a, b) for a, b in zip(params(model).values(), params(ref_model).values()))


def test_no_usable_checkpoint_is_an_error_naming_each(tmp_path):
    interrupted(tmp_path)
    for _, path in list_checkpoints(tmp_path):
        (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no usable checkpoint.*step_0000004.*step_0000002"):
        train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path, resume=True))


# ---- checksums and non-finite checks on load ------------------------------------------------

def test_flipped_byte_fails_the_checksum(tmp_path):
    interrupted(tmp_path)
    weights = latest_checkpoint(tmp_path) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's bytes: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"step_0000004/model.safetensors: checksum mismatch"):
        load_checkpoint(latest_checkpoint(tmp_path), TinyLM(TASK.vocab_size))


def test_nan_weights_are_refused_naming_file_and_tensor(tmp_path):
    model = TinyLM(TASK.vocab_size)
    with torch.no_grad():
        model.lm_head.bias[1] = float("nan")
    path = save_checkpoint(tmp_path, 3, model, {"step": 3, "optimizer": {}}, check_finite=False)
    with pytest.raises(CheckpointError, match=r"step_0000003/model.safetensors: tensor lm_head.bias holds non-finite"):
        load_checkpoint(path, TinyLM(TASK.vocab_size))
    load_checkpoint(path, TinyLM(TASK.vocab_size), check_finite=False)  # to inspect a diverged run


def test_nan_in_a_checkpoint_without_checksum_is_refused(tmp_path):
    # a checkpoint written before checksums existed (or edited together with its checksum)
    interrupted(tmp_path)
    ckpt = latest_checkpoint(tmp_path)
    (ckpt / "checksum.json").unlink()
    weights = {k: v.clone() for k, v in TinyLM(TASK.vocab_size).state_dict().items()}
    weights["embedding.weight"][0, 0] = float("inf")
    save_file(weights, str(ckpt / "model.safetensors"))
    with pytest.warns(UserWarning, match="tensor embedding.weight holds non-finite"):
        found = newest_good_checkpoint(tmp_path)
    assert found[0].name == "step_0000002"


def test_nan_optimizer_state_is_refused(tmp_path):
    model = TinyLM(TASK.vocab_size)
    state = {"step": 1, "optimizer": {"state": {0: {"exp_avg": torch.tensor([1.0, float("nan")])}}}}
    path = save_checkpoint(tmp_path, 1, model, state, check_finite=False)
    with pytest.raises(CheckpointError, match=r"state.pt: tensor optimizer.state.0.exp_avg holds non-finite"):
        load_checkpoint(path, TinyLM(TASK.vocab_size))


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, TinyLM(TASK.vocab_size), {"step": 1, "optimizer": {}})
    with pytest.raises(CheckpointError, match=r"model.safetensors does not fit this model"):
        load_checkpoint(path, TinyLM(TASK.vocab_size, d=8))


# ---- one run per output folder --------------------------------------------------------------

def test_second_process_into_the_same_out_dir_is_refused(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(tmp_path / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242'); print('held', flush=True); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=r"is in use by another run \(pid 4242\)"):
            train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path))
        assert not list_checkpoints(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path)).step == 8  # the lock died with it


def test_second_thread_into_the_same_out_dir_is_refused(tmp_path):
    errors = []
    with run_lock(tmp_path):
        t = threading.Thread(target=lambda: errors.append(pytest.raises(RunLockedError, run_lock(tmp_path).__enter__)))
        t.start()
        t.join()
        with run_lock(tmp_path):  # re-entrant in the holding thread
            pass
    assert errors and "in use by another run" in str(errors[0].value)
    with run_lock(tmp_path):  # released
        pass


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="out_dir=.*f' is a file, not a folder"):
        train(TinyLM(TASK.vocab_size), TASK, cfg(tmp_path / "f"))
