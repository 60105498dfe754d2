"""Atomic, safely loadable training checkpoints.

Layout: ``<out_dir>/checkpoints/step_0000100/`` holding

* ``model.safetensors``: the model's state dict (safetensors: no code runs on load; tied
  weights are handled by ``safetensors.torch.save_model``);
* ``state.pt``: ``torch.save`` of a dict made only of tensors, ints, floats, strings, bools,
  None, lists and dicts (optimizer state, schedule position, RNG states, data-stream position,
  counters, eval history), so that ``torch.load(..., weights_only=True)`` reads it.

* ``checksum.json``: the SHA-256 of both files, checked on load (a flipped byte or a
  truncated file is an error naming the file, not a silently different run).

On load every floating tensor (weights and optimizer state) must be finite: a checkpoint
holding NaN/inf is refused naming the file and the tensor. ``newest_good_checkpoint`` falls
back to the older checkpoint kept beside a bad newest one, with a warning.

Atomicity: all files are written into a temporary sibling directory which is then renamed
with ``os.replace``; a directory named ``step_*`` is therefore always complete, and a crash
mid-save leaves only a ``.tmp-*`` directory that is ignored (and cleaned up next save).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_model

from ..models._weights import first_nonfinite

CHECKPOINT_DIR = "checkpoints"
CHECKSUM_FILE = "checksum.json"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unreadable, wrong checksum, non-finite values); the
    message names the file and, for non-finite values, the tensor."""
_STEP_RE = re.compile(r"^step_(\d+)$")


def rng_state() -> dict[str, Any]:
    """torch CPU/CUDA and Python ``random`` states as tensors/lists (weights_only-loadable)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of ``rng_state`` (CUDA states restored only if the device count matches)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def checkpoint_root(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR


def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``out_dir`` as (step, path), oldest first."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    out_dir: str | os.PathLike, step: int, model: torch.nn.Module, state: dict[str, Any], keep: int = 2,
    *, check_finite: bool = True,
) -> Path:
    """Atomically write checkpoint ``step`` (model + ``state``), then prune to the newest ``keep``.

    ``state`` must be weights_only-loadable (tensors, numbers, strings, None, lists, dicts).
    Returns the checkpoint directory. A checkpoint that loading would refuse (a weight or
    optimizer tensor holding NaN/inf) is not written: ``CheckpointError`` naming the tensor,
    nothing on disk changed (``check_finite=False``: the caller has checked).
    Every file gets the same mode (the process umask's, as ``open`` gives).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"save_checkpoint: step must be an int >= 0, got {step!r}")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"save_checkpoint: keep must be an int >= 1 (checkpoints kept), got {keep!r}")
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError("save_checkpoint: state must be a dict with a 'step' entry (loading refuses others)")
    foreign = _not_weights_only(state)
    if foreign is not None:
        raise ValueError(f"save_checkpoint: state entry {foreign} cannot be loaded with weights_only=True "
                         "(use tensors, numbers, strings, None, lists and dicts)")
    root = checkpoint_root(out_dir)
    final = root / f"step_{step:07d}"
    bad = nonfinite_in_checkpoint(model, state) if check_finite else None
    if bad is not None:
        raise CheckpointError(f"not saving {final}: {bad} holds non-finite values (NaN/inf)")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / WEIGHTS_FILE))
    try:
        torch.save(state, tmp / STATE_FILE)
    except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) this way
        raise OSError(f"{tmp / STATE_FILE}: write failed ({' '.join(str(e).split())}); is the disk full?") from None
    same_mode(tmp / WEIGHTS_FILE, like=tmp / STATE_FILE)
    sums = {name: file_sha256(tmp / name) for name in (WEIGHTS_FILE, STATE_FILE)}
    (tmp / CHECKSUM_FILE).write_text(json.dumps({"sha256": sums}, indent=1))
    if final.exists():  # same step saved before (e.g. re-run after a crash): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


_PLAIN = (torch.Tensor, int, float, str, bool, type(None), torch.dtype, torch.Size, torch.device)


def _not_weights_only(tree: Any, prefix: str = "state") -> str | None:
    """The dotted name and type of the first entry of ``tree`` that ``torch.load(...,
    weights_only=True)`` would refuse, or None (checked before saving, not found on load)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                return f"{prefix} (key {k!r} of type {type(k).__name__})"
            found = _not_weights_only(v, f"{prefix}.{k}")
            if found is not None:
                return found
        return None
    if isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            found = _not_weights_only(v, f"{prefix}.{i}")
            if found is not None:
                return found
        return None
    return None if isinstance(tree, _PLAIN) else f"{prefix} ({type(tree).__name__})"


def same_mode(path: Path, like: Path) -> None:
    """Give ``path`` the permission bits of ``like`` (safetensors creates its files 0600,
    whatever the umask; the files Python writes beside them get the umask's mode)."""
    os.chmod(path, like.stat().st_mode & 0o777)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_checksums(path: Path) -> None:
    """Compare the files of checkpoint ``path`` with its ``checksum.json`` (checkpoints written
    before checksums existed have none and are only checked for readability and finiteness)."""
    sums_file = path / CHECKSUM_FILE
    if not sums_file.exists():
        return
    try:
        sums = json.loads(sums_file.read_text())["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{sums_file}: unreadable checksum file ({e})") from None
    for name, want in sums.items():
        if file_sha256(path / name) != want:
            raise CheckpointError(f"{path / name}: checksum mismatch (the file changed after it was saved)")


def _named_tensors(tree: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) of every tensor in ``tree`` (dicts/lists/tuples), in order."""
    if isinstance(tree, torch.Tensor):
        yield prefix or "<tensor>", tree
        return
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for k, v in items:
        yield from _named_tensors(v, f"{prefix}.{k}" if prefix else str(k))


def _nonfinite_tensor(tree: Any, prefix: str = "") -> str | None:
    """The dotted name of the first floating tensor in ``tree`` (dicts/lists) holding NaN/inf."""
    return first_nonfinite(_named_tensors(tree, prefix))


def nonfinite_in_checkpoint(model: torch.nn.Module, state: dict[str, Any]) -> str | None:
    """What a checkpoint of ``model`` and ``state`` would hold that loading refuses: "tensor
    <name>" (a weight) or "optimizer state <name>" with NaN/inf, or None if all is finite."""
    bad = first_nonfinite(model.state_dict().items())
    return f"tensor {bad}" if bad is not None else nonfinite_in_state(state)


def nonfinite_in_state(state: dict[str, Any]) -> str | None:
    """"optimizer state <name>" of the first NaN/inf tensor of a checkpoint ``state``'s
    optimizer state, or None."""
    bad = _nonfinite_tensor(state.get("optimizer", {}))
    return None if bad is None else f"optimizer state optimizer.{bad}"


def verify_checkpoint(path: str | os.PathLike, check_finite: bool = True) -> dict[str, Any]:
    """Check checkpoint ``path`` (files present, checksums, every tensor readable and, unless
    ``check_finite`` is off, finite) and return its state dict; raises ``CheckpointError``
    naming the file (and tensor)."""
    path = Path(path)
    for name in (WEIGHTS_FILE, STATE_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name}: missing")
    _check_checksums(path)
    try:
        weights = load_file(str(path / WEIGHTS_FILE))
    except Exception as e:  # safetensors raises its own error types for truncated/garbled files
        raise CheckpointError(f"{path / WEIGHTS_FILE}: unreadable ({' '.join(str(e).split())})") from None
    bad = _nonfinite_tensor(weights) if check_finite else None
    if bad is not None:
        raise CheckpointError(f"{path / WEIGHTS_FILE}: tensor {bad} holds non-finite values (NaN/inf)")
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of a truncated or foreign file
        raise CheckpointError(f"{path / STATE_FILE}: unreadable ({' '.join(str(e).split())})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path / STATE_FILE}: not a training checkpoint state (no 'step')")
    bad = _nonfinite_tensor(state.get("optimizer", {})) if check_finite else None
    if bad is not None:
        raise CheckpointError(f"{path / STATE_FILE}: tensor optimizer.{bad} holds non-finite values (NaN/inf)")
    return state


def load_weights(path: str | os.PathLike, model: torch.nn.Module, device: torch.device | str = "cpu") -> None:
    """Load the weights of (verified) checkpoint ``path`` into ``model`` (strict)."""
    try:
        load_model(model, str(Path(path) / WEIGHTS_FILE), strict=True, device=str(device))
    except RuntimeError as e:  # missing/unexpected/mis-shaped tensors: another model
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{Path(path) / WEIGHTS_FILE} does not fit this model: "
                              f"{' '.join(line.strip() for line in first[:3])}") from None


def load_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, device: torch.device | str = "cpu", *,
    check_finite: bool = True,
) -> dict[str, Any]:
    """Verify checkpoint ``path``, load its weights into ``model`` (strict) and return its
    state dict (``weights_only=True``). Raises ``CheckpointError`` for a bad checkpoint;
    ``check_finite=False`` accepts NaN/inf (e.g. to inspect a diverged run's weights)."""
    state = verify_checkpoint(path, check_finite)
    load_weights(path, model, device)
    return state


def newest_good_checkpoint(out_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """(path, state) of the newest checkpoint in ``out_dir`` that passes ``verify_checkpoint``;
    a bad newer one is skipped with a warning naming it and the reason. None if there are no
    checkpoints; ``CheckpointError`` if there are some and none is usable."""
    found = list_checkpoints(out_dir)
    problems = []
    for _, path in reversed(found):
        try:
            state = verify_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            warnings.warn(f"skipped bad checkpoint(s), resuming from {path}: {'; '.join(problems)}",
                          stacklevel=2)
        return path, state
    if problems:
        raise CheckpointError(f"no usable checkpoint in {Path(out_dir)}: {'; '.join(problems)}")
    return None


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory in ``out_dir``, or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None
