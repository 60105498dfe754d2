"""Entry checks for plain (non-tensor) arguments: one-line errors naming the argument, its
value and what is allowed.

Used where a value enters the library (configs, layer constructors, sweep files), never in
inner loops. ``bool`` is not accepted as an int or a float (``n_layer=True`` is a mistake,
not 1), and floats must be finite unless a bound says otherwise. numpy scalars
(``np.int64(16)`` from an array, ``np.float32`` from a linspace) are refused too, with a
message saying how to pass them: stored in a config they would break its JSON files
(``json.dumps`` does not take them), long after the value entered.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numpy_note(value: Any) -> str:
    """For a numpy scalar, a note naming its type and the plain Python value to pass instead
    (a bare "np.int32(4) must be an integer" reads as a contradiction); else ""."""
    kind = type(value)
    if kind.__module__ == "numpy" and hasattr(value, "item"):
        return f" (a numpy {kind.__name__}: pass {type(value.item()).__name__}(value))"
    return ""


def int_arg(where: str, name: str, value: Any, *, minimum: int | None = None, optional: bool = False) -> None:
    """Raise ValueError unless ``value`` is an int (not bool) >= ``minimum`` (or None if ``optional``)."""
    if optional and value is None:
        return
    bound = f" >= {minimum}" if minimum is not None else ""
    if not _is_int(value):
        raise ValueError(f"{where}: {name}={value!r} must be an integer{bound}{numpy_note(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}: {name}={value!r} must be an integer{bound}")


def real_arg(where: str, name: str, value: Any, *, low: float | None = None, high: float | None = None,
             low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    """Raise ValueError unless ``value`` is a finite real number in the given interval.

    ``low``/``high``: bounds (None = unbounded); ``*_open``: the bound itself is excluded.
    """
    if optional and value is None:
        return
    if low is not None and high is not None:
        bound = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        bound = f"{'>' if low_open else '>='} {low}"
    elif high is not None:
        bound = f"{'<' if high_open else '<='} {high}"
    else:
        bound = "finite"
    if not _is_real(value) or not math.isfinite(value):
        raise ValueError(f"{where}: {name}={value!r} must be a finite number"
                         + ("" if bound == "finite" else f" {bound}") + numpy_note(value))
    if (low is not None and (value < low or (low_open and value == low))) or \
            (high is not None and (value > high or (high_open and value == high))):
        raise ValueError(f"{where}: {name}={value!r} must be {bound}")


def range_arg(where: str, name: str, value: Any, *, low: float, allow_inf_high: bool, strict_low: bool) -> None:
    """Raise ValueError unless ``value`` = (lo, hi) holds two finite numbers (hi may be inf
    if ``allow_inf_high``) with low <= lo <= hi (low < lo if ``strict_low``)."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        _is_real(v) and not math.isnan(v) for v in value)
    if ok:
        lo, hi = value
        ok = math.isfinite(lo) and (math.isfinite(hi) or (allow_inf_high and hi == math.inf))
        ok = ok and (lo > low if strict_low else lo >= low) and lo <= hi
    if not ok:
        rel = "<" if strict_low else "<="
        raise ValueError(f"{where}: {name}={value!r} must be two numbers (lo, hi) with {low} {rel} lo <= hi")


def bool_arg(where: str, name: str, value: Any, *, optional: bool = False) -> None:
    """Raise ValueError unless ``value`` is a bool (a string such as "no" is not taken as true)."""
    if optional and value is None:
        return
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {name}={value!r} must be true or false{numpy_note(value)}")


def choice_arg(where: str, name: str, value: Any, allowed: tuple | list) -> None:
    """Raise ValueError unless ``value`` is one of ``allowed``."""
    if isinstance(value, bool) or value not in allowed:  # True == 1 would match an int choice
        raise ValueError(f"{where}: {name}={value!r} must be one of {list(allowed)}")


def device_problem(device: Any) -> str | None:
    """Why ``device`` cannot be used here (None if it can): not a device string, a CUDA
    device on a machine without CUDA (or without that many GPUs), or a type other than
    cpu, cuda, mps and xpu (``meta`` tensors hold no values to train or load into). The
    message without a prefix: the training config and ``from_pretrained`` add theirs."""
    if not isinstance(device, (str, torch.device)):
        return f"device={device!r} must be a device name such as 'cpu' or 'cuda'"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return f"device={device!r} is not a device name (e.g. 'cpu', 'cuda', 'cuda:1')"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return f"device={device!r} but CUDA is not available here (use 'cpu')"
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            return f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) are visible"
    elif dev.type not in ("cpu", "mps", "xpu"):  # meta tensors hold no values: nothing to train
        return f"device={device!r}: training supports 'cpu' and 'cuda'"
    return None


def make_folder(where: str, name: str, path: Any) -> None:
    """Create folder ``path`` with its parents, or raise ValueError naming the argument and
    the file that stands where a folder must be (instead of the OS's "File exists" or "Not a
    directory" about a path the caller never named)."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        file = next((p for p in (Path(path), *Path(path).parents) if p.exists() and not p.is_dir()), None)
        raise ValueError(f"{where}: {name}={str(path)!r} cannot be created: {file} is a file, not a folder") from None
