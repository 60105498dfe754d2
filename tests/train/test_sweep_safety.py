"""Sweeps that neither lie nor mix (issue 14): a changed config is recognised per point and
refused, its history kept; sweep files are checked where they enter; workers die with the
sweep."""
import copy
import json
import os
import subprocess
import sys
import time

import pytest

from mimetic.train.sweep import load_sweep, parse_sweep, run_sweep
from mimetic.train.sweep.record import HISTORY_FILE, SETTINGS_FILE

from .test_sweep import TINY, tiny_factory, write_toml

SMALL = copy.deepcopy(TINY)
SMALL["grid"].update(init=["default"], layer=["Mamba2"], d_state=[2], length=[2], seed=[0])
SMALL.pop("eval")


def small(**edits):
    data = copy.deepcopy(SMALL)
    for path, value in edits.items():
        table, key = path.split(".")
        data[table][key] = value
    return data


def sweep(tmp_path, data):
    return run_sweep(write_toml(tmp_path / "s.toml", data), tmp_path / "out", progress=False, plot=False,
                     model_factory=tiny_factory)


def test_rerun_after_editing_a_setting_is_refused(tmp_path):
    sweep(tmp_path, small())
    changed = r"config changed for 1 point.*copy-default-Mamba2-d2-L2-s0: steps was 6, now 9"
    with pytest.raises(ValueError, match=changed):
        sweep(tmp_path, small(**{"train.steps": 9}))
    rows = json.loads((tmp_path / "out" / "runs" / "copy-default-Mamba2-d2-L2-s0" / "row.json").read_text())
    assert rows["steps"] == 6  # the finished row was left alone


def test_rerun_after_editing_a_task_knob_is_refused(tmp_path):
    sweep(tmp_path, small())
    with pytest.raises(ValueError, match="task.vocab was 4, now 5"):
        sweep(tmp_path, small(**{"tasks.copy": {"vocab": 5}}))


def test_added_points_run_and_the_history_keeps_both_configs(tmp_path):
    first = sweep(tmp_path, small())
    second = sweep(tmp_path, small(**{"grid.seed": [0, 1]}))
    assert second.skipped == 1 and len(second.rows) == 2
    history = [json.loads(line) for line in (tmp_path / "out" / HISTORY_FILE).read_text().splitlines()]
    assert [h["config"]["grid"]["seed"] for h in history] == [[0], [0, 1]]
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["grid"]["seed"] == [0, 1]
    sweep(tmp_path, small(**{"grid.seed": [0, 1]}))  # same config again: no new history entry
    assert len((tmp_path / "out" / HISTORY_FILE).read_text().splitlines()) == 2
    assert first.rows[0] == second.rows[0]


def test_each_run_folder_records_its_settings(tmp_path):
    sweep(tmp_path, small())
    rec = json.loads((tmp_path / "out" / "runs" / "copy-default-Mamba2-d2-L2-s0" / SETTINGS_FILE).read_text())
    assert rec["settings"]["train"]["steps"] == 6 and rec["settings"]["task"]["copy_len"] == 2
    assert len(rec["sha256"]) == 64


def test_presentation_edits_are_not_a_config_change(tmp_path):
    sweep(tmp_path, small())
    again = sweep(tmp_path, small(**{"sweep.metric": "best_token_acc"}))
    assert again.skipped == 1


# ---- sweep files checked where they enter ----------------------------------------------------

@pytest.mark.parametrize("edit, match", [
    ({"train.grad_clip": -1.0}, r"grad_clip=-1.0 must be > 0"),
    ({"train.steps": 6.5}, r"steps=6.5 must be an integer"),
    ({"train.weight_decay": -1.0}, r"weight_decay=-1.0 must be >= 0"),
    ({"sweep.metric": "final_tokn_acc"}, r"metric='final_tokn_acc' is not a column of results.csv"),
    ({"sweep.name": "../../x"}, r"name='../../x' must be a plain folder name"),
    ({"eval.batches": 0}, r"\[eval\]: batches=0 must be an integer >= 1"),
    ({"eval.lengths": [0]}, r"\[eval\]: lengths=\[0\] must be a list of integers >= 1"),
])
def test_bad_sweep_value_fails_at_load(edit, match):
    data = copy.deepcopy(SMALL)
    for path, value in edit.items():
        table, key = path.split(".")
        data.setdefault(table, {})[key] = value
    with pytest.raises(ValueError, match=match) as e:
        parse_sweep(data)
    assert "\n" not in str(e.value)


def test_init_variant_shadowing_a_builtin_is_refused():
    data = copy.deepcopy(SMALL)
    data["inits"] = {"default": {"init": "mimetic"}}
    with pytest.raises(ValueError, match=r"\[inits.default\]: 'default' is a built-in init"):
        parse_sweep(data)


def test_misspelled_layer_table_is_refused():
    data = copy.deepcopy(SMALL)
    data["model"]["ssm_cfg"] = {"Mamba3": {"headdim": 4}}
    with pytest.raises(ValueError, match=r"\[model.ssm_cfg.Mamba3\]: not a layer type"):
        parse_sweep(data)


def test_string_typed_mixer_argument_is_refused():
    data = copy.deepcopy(SMALL)
    data["model"]["ssm_cfg"] = {"Mamba2": {"headdim": "8"}}
    with pytest.raises(ValueError, match=r"headdim='8' must be an integer"):
        parse_sweep(data)


def test_sweep_file_that_is_a_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="a folder; give its .toml file"):
        load_sweep(tmp_path)


# ---- workers die with the sweep ----------------------------------------------------------------

def test_worker_exits_when_its_parent_is_killed(tmp_path):
    # parent: starts a spawned worker running the sweep's initializer, then sleeps; kill -9 it
    code = (
        "import multiprocessing as mp, os, sys, time\n"
        "from mimetic.train.sweep.runner import die_with_parent\n"
        "def work(pid):\n"
        "    die_with_parent(pid, poll_s=0.05)\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('spawn').Process(target=work, args=(os.getpid(),))\n"
        "    p.start(); print(p.pid, flush=True); time.sleep(120)\n"
    )
    script = tmp_path / "parent.py"
    script.write_text(code)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    time.sleep(0.5)
    parent.kill()
    parent.wait()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{worker}/stat") as f:
            if f.read().split()[2] == "Z":  # exited, waiting to be reaped by init
                return
        time.sleep(0.1)
    os.kill(worker, 9)
    pytest.fail("the worker outlived its parent")


def test_init_variant_name_with_a_path_is_refused():
    data = copy.deepcopy(SMALL)
    data["inits"] = {"../x": {"init": "mimetic"}}
    data["grid"]["init"] = ["../x"]
    with pytest.raises(ValueError, match=r"\[inits.../x\]: the name must be letters"):
        parse_sweep(data)


def test_cut_off_point_resumes_with_fewer_steps_where_allowed(tmp_path):
    """A point cut off at step 6 of 12 (constant lr: the first steps do not depend on the step
    budget), resumed with steps 9 and ``allow_changed = ["steps"]``, ends with the row a fresh
    9-step sweep gives; without allow_changed the change is refused."""
    import dataclasses

    from mimetic.train.sweep import run_point
    from mimetic.train.sweep.record import check_and_record

    constant = {"train.steps": 12, "train.warmup_steps": 0, "train.min_lr_ratio": 1.0}
    cfg = load_sweep(write_toml(tmp_path / "long.toml", small(**constant)))
    point = cfg.points()[0]
    run_dir = tmp_path / "out" / "runs" / point.run_id
    early = dataclasses.replace(cfg, train={**cfg.train, "interrupt_after": 6})
    check_and_record(cfg, [point], run_dir.parent, tmp_path / "out")  # as the sweep does first
    run_point(early, point, run_dir, model_factory=tiny_factory)  # stopped at step 6 of 12
    (run_dir / "row.json").unlink(missing_ok=True)
    shorter = {**constant, "train.steps": 9}
    with pytest.raises(ValueError, match="steps was 12, now 9"):
        sweep(tmp_path, small(**shorter))
    with pytest.warns(UserWarning, match=r"resuming with changed steps \(12 -> 9\)"):
        resumed = sweep(tmp_path, small(**shorter, **{"train.allow_changed": ["steps"]}))
    fresh = run_sweep(write_toml(tmp_path / "short.toml", small(**shorter)), tmp_path / "fresh",
                      progress=False, plot=False, model_factory=tiny_factory)
    assert resumed.rows[0]["steps"] == 9
    for key in ("final_loss", "final_token_acc", "best_token_acc"):
        assert resumed.rows[0][key] == pytest.approx(fresh.rows[0][key], abs=1e-6), key
    stored = json.loads((run_dir / SETTINGS_FILE).read_text())
    assert stored["settings"]["train"]["steps"] == 9  # the settings behind the row it now has


def test_finished_row_is_not_changed_even_where_allowed(tmp_path):
    sweep(tmp_path, small())
    with pytest.raises(ValueError, match="steps was 6, now 9"):
        sweep(tmp_path, small(**{"train.steps": 9, "train.allow_changed": ["steps"]}))
