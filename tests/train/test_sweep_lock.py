"""One sweep per output folder (issue 14): a second sweep into a folder another sweep is
using stops at once naming it and the holder, before it writes anything; the lock goes with
the sweep (finished, failed or killed)."""
import json
import subprocess
import sys
import threading

import pytest

from mimetic.cli import main
from mimetic.train.resume import RunLockedError, run_lock
from mimetic.train.sweep import run_sweep
from mimetic.train.sweep.record import HISTORY_FILE

from .test_sweep import tiny_factory, write_toml
from .test_sweep_safety import SMALL

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, str(os.getpid()).encode(), 0)
print("held", flush=True)
sys.stdin.read()
"""


def sweep(tmp_path, out):
    return run_sweep(write_toml(tmp_path / "s.toml", SMALL), out, progress=False, plot=False,
                     model_factory=tiny_factory)


@pytest.fixture
def held_by_another_process(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out / ".lock")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc.pid
    proc.stdin.close()
    proc.wait(timeout=30)


def test_second_sweep_into_a_busy_folder_is_refused_before_writing(tmp_path, held_by_another_process):
    out, pid = held_by_another_process
    with pytest.raises(RunLockedError, match=rf"{out} is in use by another sweep \(pid {pid}\); .*another --out"):
        sweep(tmp_path, out)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no sweep.json, history or runs


def test_cli_sweep_into_a_busy_folder_is_one_line(tmp_path, held_by_another_process, capsys):
    out, pid = held_by_another_process
    path = write_toml(tmp_path / "s.toml", SMALL)
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mimetic: error:") and err.count("\n") == 1 and f"pid {pid}" in err, err


def test_busy_folder_in_this_process_is_refused(tmp_path):
    out = tmp_path / "out"
    ready, done = threading.Event(), threading.Event()

    def holder():
        with run_lock(out, what="sweep"):
            ready.set()
            done.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    ready.wait(30)
    try:
        with pytest.raises(RunLockedError, match="in use by another sweep in this process"):
            sweep(tmp_path, out)
    finally:
        done.set()
        t.join()


def test_the_lock_goes_with_the_sweep(tmp_path):
    out = tmp_path / "out"
    first = sweep(tmp_path, out)
    second = sweep(tmp_path, out)  # the first released it: resumes, skipping the finished point
    assert second.skipped == len(first.rows) == 1
    assert len((out / HISTORY_FILE).read_text().splitlines()) == 1
    with run_lock(out, what="sweep"):  # free again now
        pass


def test_a_failed_sweep_releases_the_lock(tmp_path):
    out = tmp_path / "out"

    def broken(model_cfg, task, point):
        raise RuntimeError("factory failed")

    with pytest.raises(RuntimeError, match="factory failed"):
        run_sweep(write_toml(tmp_path / "s.toml", SMALL), out, progress=False, plot=False, model_factory=broken)
    rows = sweep(tmp_path, out).rows
    assert len(rows) == 1 and json.loads((out / "sweep.json").read_text())["name"] == SMALL["sweep"]["name"]
