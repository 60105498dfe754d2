"""Safe use of an output folder: one run at a time (a lock), resume only with the settings the
run was started with, recovery from a bad newest checkpoint.

What ``train()`` (and ``train_ensemble``) do with ``out_dir``, via :func:`open_run`:

* ``resume=False`` and checkpoints present: refused (use ``resume=True`` or a fresh folder).
* ``resume=True``: the newest *good* checkpoint is used (a bad newer one is skipped with a
  warning, see ``checkpoint.newest_good_checkpoint``). Its recorded settings (the
  ``TrainConfig`` fields that shape the run, the task's knobs, the model's config) must equal
  the current ones; a difference is a ValueError naming the setting, unless the setting is in
  ``TrainConfig.allow_changed`` (or that is True), which only warns.
* A finished run (``result.json``) resumed with *more* ``steps`` continues training from its
  final checkpoint (the schedule is the new one from there on); otherwise its stored result is
  returned. A finished run whose final checkpoint was bad resumes from the older one and
  retrains the missing steps (deterministic, so it ends where it ended before).
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .._validate import make_folder
from ..models.config import RETIRED_FIELDS
from .checkpoint import list_checkpoints, load_weights, newest_good_checkpoint
from .config import TrainConfig

RESULT_FILE = "result.json"
LOCK_FILE = ".lock"
#: TrainConfig fields that do not change what a run computes (where it writes, how it
#: reports, on which device, how it is sliced into calls), so resuming may change them.
NEUTRAL_FIELDS = frozenset({"out_dir", "resume", "progress", "tensorboard", "interrupt_after",
                            "keep_checkpoints", "checkpoint_every", "device", "cuda_graph", "allow_changed",
                            "parallel"})

_held: dict[str, tuple[int, int, int]] = {}  # path -> (fd, owning thread, depth)
_held_lock = threading.Lock()


class RunLockedError(RuntimeError):
    """Another process (or thread) is already running in this output folder."""


@contextlib.contextmanager
def run_lock(out_dir: str | os.PathLike | None, what: str = "run") -> Iterator[None]:
    """Hold ``<out_dir>/.lock`` (an exclusive ``flock``) for the duration: a second run into the
    same folder fails at once with ``RunLockedError`` naming the folder and the holder's pid,
    instead of both writing checkpoints and metrics over each other. Re-entrant within one
    thread (``train`` on the graph path calls ``train_ensemble``); released on exit or when
    the process dies. No-op for ``out_dir=None`` or where ``fcntl`` is missing."""
    if out_dir is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    out = Path(out_dir)
    _check_out_dir(out)
    key = str(out.resolve())
    me = threading.get_ident()
    with _held_lock:
        if key in _held:
            fd, owner, depth = _held[key]
            if owner != me:
                raise RunLockedError(f"{out} is in use by another {what} in this process; use another out_dir")
            _held[key] = (fd, owner, depth + 1)
            fd = -1
        else:
            fd = _acquire(out, fcntl, what)
            _held[key] = (fd, me, 1)
    try:
        yield
    finally:
        with _held_lock:
            fd, owner, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, owner, depth - 1)
            else:
                del _held[key]
                os.close(fd)  # closing the descriptor releases the flock


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} is a file, not a folder")
    make_folder("train", "out_dir", out)


def _acquire(out: Path, fcntl, what: str = "run") -> int:
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides, as for every file
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunLockedError(f"{out} is in use by another {what} (pid {holder}); wait for it or use "
                             f"another {'--out' if what == 'sweep' else 'out_dir'}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def run_settings(config: TrainConfig, task: Any, model: torch.nn.Module) -> dict[str, Any]:
    """What a checkpoint records to recognise its run: ``train`` (the TrainConfig fields outside
    ``NEUTRAL_FIELDS``), ``task`` (``task.to_dict()``) and ``model`` (``model.config.to_dict()``
    where the model has one), JSON-normalised (tuples as lists)."""
    train = {k: v for k, v in config.to_dict().items() if k not in NEUTRAL_FIELDS}
    settings: dict[str, Any] = {"train": train}
    if hasattr(task, "to_dict"):
        settings["task"] = task.to_dict()
    model_config = getattr(model, "config", None)
    if hasattr(model_config, "to_dict"):
        settings["model"] = model_config.to_dict()
    return json.loads(json.dumps(settings, default=str))


def _flatten(d: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def without_retired(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as they are recorded now: the model's ``RETIRED_FIELDS`` (which older runs
    recorded and no run reads) left out."""
    model = settings.get("model")
    if not isinstance(model, dict) or not set(RETIRED_FIELDS) & set(model):
        return settings
    return {**settings, "model": {k: v for k, v in model.items() if k not in RETIRED_FIELDS}}


def changed_settings(stored: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(name, stored value, current value) of every setting that differs. Names: a TrainConfig
    field as is (``lr``), task knobs as ``task.<knob>``, model fields as ``model.<path>``
    (``model.ssm_cfg.d_state``). Sections the checkpoint did not record are not compared, nor
    are retired model fields (:func:`without_retired`)."""
    stored = without_retired(stored)
    diffs = []
    for section, values in current.items():
        if section not in stored:
            continue
        prefix = "" if section == "train" else section
        old, new = _flatten(stored[section], prefix), _flatten(values, prefix)
        for name in sorted(set(old) | set(new)):
            if old.get(name, "<unset>") != new.get(name, "<unset>"):
                diffs.append((name, old.get(name, "<unset>"), new.get(name, "<unset>")))
    return diffs


def change_allowed(name: str, allow: bool | tuple[str, ...]) -> bool:
    """Whether ``allow_changed`` covers setting ``name`` (a name also covers what is below it:
    ``model`` covers ``model.init``)."""
    if allow is True:
        return True
    return any(name == a or name.startswith(a + ".") for a in allow or ())


def check_settings(state: dict[str, Any], config: TrainConfig, task: Any, model: torch.nn.Module,
                   ckpt: Path, extending: bool) -> None:
    """Refuse to resume checkpoint ``ckpt`` (its ``state``) with other settings than it was made
    with. ``extending``: a finished run resumed with more steps, for which ``steps`` may grow."""
    stored = dict(state.get("settings") or {})
    if "train" not in stored and isinstance(state.get("config"), dict):  # checkpoints before settings
        stored["train"] = {k: v for k, v in state["config"].items() if k not in NEUTRAL_FIELDS}
        stored = json.loads(json.dumps(stored, default=str))
    diffs = changed_settings(stored, run_settings(config, task, model))
    if extending:
        diffs = [d for d in diffs if d[0] != "steps"]
    refused = [d for d in diffs if not change_allowed(d[0], config.allow_changed)]
    if refused:
        name, old, new = refused[0]
        more = f" (and {', '.join(d[0] for d in refused[1:])})" if len(refused) > 1 else ""
        names = ", ".join(repr(d[0]) for d in refused)
        raise ValueError(f"cannot resume {ckpt}: {name} was {old!r}, now {new!r}{more}; resume with the "
                         f"same settings, use a fresh out_dir, or pass allow_changed=[{names}] "
                         "(--allow-changed) if the change is intended")
    if diffs:
        listing = ", ".join(f"{n}: {o!r} -> {v!r}" for n, o, v in diffs)
        warnings.warn(f"resuming {ckpt} with changed settings (allowed): {listing}", stacklevel=3)


def read_result(out: Path) -> dict[str, Any] | None:
    """The stored ``result.json`` of a finished run in ``out`` (None if not finished)."""
    path = out / RESULT_FILE
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to resume from the checkpoints") from None
    if not isinstance(result, dict) or not isinstance(result.get("step"), int):
        raise ValueError(f"{path} is not a training result (no integer 'step'); delete it to resume")
    return result


def open_run(out: Path | None, config: TrainConfig, task: Any, model: torch.nn.Module,
             device: torch.device) -> tuple[str, dict[str, Any] | None]:
    """Decide what a run in ``out`` does and load its weights into ``model`` when it resumes:

    ("fresh", None): train from step 0 (no folder, or no checkpoint yet);
    ("finished", result dict): done before; ``model`` holds the final weights;
    ("resume", checkpoint state): continue from ``state["step"]``; ``model`` holds its weights.
    """
    if out is None:
        return "fresh", None
    if not config.resume:
        if list_checkpoints(out):
            raise ValueError(f"{out} already holds checkpoints; pass resume=True (--resume) or use a fresh out_dir")
        return "fresh", None
    result = read_result(out)
    found = newest_good_checkpoint(out)
    if found is None:
        return ("finished", result) if result is not None else ("fresh", None)
    ckpt, state = found
    done = result is not None and state["step"] == result["step"]
    stopped = done and (result.get("stopped_early") or result["step"] >= config.steps)
    check_settings(state, config, task, model, ckpt, extending=result is not None and config.steps > result["step"])
    load_weights(ckpt, model, device)
    if stopped:
        return "finished", result
    if state["data"]["seed"] != config.seed:
        raise ValueError(f"checkpoint {ckpt} was made with seed {state['data']['seed']}, not {config.seed}")
    return "resume", state
