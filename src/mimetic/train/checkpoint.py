"""Atomic, safely loadable training checkpoints.

Layout: ``<out_dir>/checkpoints/step_0000100/`` holding

* ``model.safetensors``: the model's state dict (safetensors: no code runs on load; tied
  weights are handled by ``safetensors.torch.save_model``);
* ``state.pt``: ``torch.save`` of a dict made only of tensors, ints, floats, strings, bools,
  None, lists and dicts (optimizer state, schedule position, RNG states, data-stream position,
  counters, eval history), so that ``torch.load(..., weights_only=True)`` reads it.

Atomicity: both files are written into a temporary sibling directory which is then renamed
with ``os.replace``; a directory named ``step_*`` is therefore always complete, and a crash
mid-save leaves only a ``.tmp-*`` directory that is ignored (and cleaned up next save).
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

CHECKPOINT_DIR = "checkpoints"
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
    out_dir: str | os.PathLike, step: int, model: torch.nn.Module, state: dict[str, Any], keep: int = 2
) -> Path:
    """Atomically write checkpoint ``step`` (model + ``state``), then prune to the newest ``keep``.

    ``state`` must be weights_only-loadable (tensors, numbers, strings, None, lists, dicts).
    Returns the checkpoint directory.
    """
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-step_{step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    if final.exists():  # same step saved before (e.g. re-run after a crash): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for _, old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Load weights into ``model`` (strict) and return the state dict (``weights_only=True``)."""
    path = Path(path)
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=True, device=str(device))
    del missing, unexpected  # strict=True already raised on any mismatch
    return torch.load(path / "state.pt", map_location="cpu", weights_only=True)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory in ``out_dir``, or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None
