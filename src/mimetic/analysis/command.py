"""What ``mimetic attn CHECKPOINT --input ... --out maps.png`` does, as one function."""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models import MambaLM
from ..tasks import TASKS, make_generator, make_task
from .maps import DEFAULT_MAX_BYTES, attention_maps, layer_kind
from .plot import DEFAULT_MAX_HEADS, plot_attention_maps
from .summary import map_summary


@dataclass
class AttnResult:
    """What :func:`attn_command` produced.

    ``path``: the PNG written; ``maps``: {layer: (batch, heads, L, L)}; ``input_ids``
    (batch, L); ``kinds``: {layer: "Mamba1" | "Mamba2" | "attention"}; ``summary``:
    {layer: {metric name: float}} (see :meth:`lines`).
    """

    path: str
    maps: dict[int, torch.Tensor]
    input_ids: torch.Tensor
    kinds: dict[int, str]
    summary: dict[int, dict[str, float]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """One human-readable line per layer, for the CLI to print."""
        out = []
        for i, m in self.maps.items():
            scores = ", ".join(f"{k} {v:.3f}" for k, v in self.summary.get(i, {}).items())
            out.append(f"layer {i} ({self.kinds[i]}, {m.shape[1]} head"
                       f"{'s' if m.shape[1] != 1 else ''}): {scores}")
        return out


#: The file name ``attn_command`` writes into a folder given as ``out_png``.
DEFAULT_PNG = "attention_maps.png"


def _png_path(out_png: str | os.PathLike) -> str:
    """Where the picture goes: ``out_png`` itself; ``<folder>/attention_maps.png`` for an
    existing folder (or a path ending in a separator); ``.png`` added to a name without a
    suffix (matplotlib's default format, which it would add silently)."""
    path = os.fspath(out_png)
    if not isinstance(path, str) or not path:
        raise ValueError(f"out_png must be a file path, got {out_png!r}")
    if os.path.isdir(path) or path.endswith(os.sep):
        return os.path.join(path, DEFAULT_PNG)
    suffix = os.path.splitext(path)[1]
    if not suffix:
        return path + ".png"
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix[1:].lower() not in formats:
        raise ValueError(f"out_png {path!r}: matplotlib cannot write {suffix!r} files "
                         f"(use one of {', '.join('.' + f for f in sorted(formats))})")
    return path


def _load_model(model, device) -> nn.Module:
    if isinstance(model, (str, os.PathLike)):
        return MambaLM.from_pretrained(model, device=device).eval()
    if not isinstance(model, MambaLM):
        raise TypeError(f"expected a MambaLM or a checkpoint directory, got {type(model).__name__}")
    return model.to(device) if device is not None else model


def _parse_inputs(inputs, vocab_size: int, seed: int, task_kwargs: dict | None):
    """-> (input_ids (batch, L), token labels (L,), marks, task or None)."""
    task = None
    if isinstance(inputs, str) and inputs.strip() in TASKS:
        task = make_task(inputs.strip(), **(task_kwargs or {}))
        if task.vocab_size > vocab_size:
            raise ValueError(f"task {task.name!r} uses {task.vocab_size} tokens but the model's "
                             f"vocabulary has {vocab_size}")
        ids = task.batch(1, make_generator("attn", seed))[0]
    elif task_kwargs:
        raise ValueError("task_kwargs given but inputs is not a task name "
                         f"(known tasks: {sorted(TASKS)})")
    elif isinstance(inputs, str):
        try:
            ids = torch.tensor([int(t) for t in inputs.replace(",", " ").split()], dtype=torch.long)
        except ValueError:
            raise ValueError(f"inputs {inputs!r} is neither a task name (one of {sorted(TASKS)}) "
                             "nor a list of token ids like '3 1 4 1 5'") from None
    else:
        ids = torch.as_tensor(inputs)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[1] == 0 or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"input ids must be a non-empty integer (L,) or (batch, L), got "
                         f"{ids.dtype} {tuple(ids.shape)}")
    labels: list[str] = [str(int(t)) for t in ids[0]]
    marks = []
    for name in ("bos", "sep"):  # name the special tokens of tasks that have them
        special = getattr(task, name, None)
        if isinstance(special, int):
            for p, t in enumerate(ids[0].tolist()):
                if t == special:
                    labels[p] = name.upper()
                    if name == "sep":
                        marks.append(p)
    return ids.long(), labels, marks, task


def attn_command(model: nn.Module | str | os.PathLike,
                 inputs: str | torch.Tensor | Sequence[int],
                 out_png: str | os.PathLike,
                 layers: int | Iterable[int] | None = None,
                 log_scale: bool = True,
                 reduce: str = "mean_abs",
                 channels: Sequence[int] | None = None,
                 max_heads: int = DEFAULT_MAX_HEADS,
                 seed: int = 0,
                 task_kwargs: dict | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 title: str | None = None,
                 device: str | torch.device | None = None) -> AttnResult:
    """Compute a model's attention maps on one input and write them as a PNG grid.

    Args:
        model: a :class:`~mimetic.models.MambaLM`, or a checkpoint directory loaded with
            ``MambaLM.from_pretrained``.
        inputs: a task name (``"copy"``, ``"mqar"``, ``"selective_copy"``,
            ``"induction_heads"``; one sequence drawn with ``seed`` and ``task_kwargs``),
            a string of token ids (``"3 1 4 1 5"`` or ``"3,1,4"``), or ids as a tensor /
            list, (L,) or (batch, L).
        out_png: where to write the picture (a folder: ``attention_maps.png`` in it; no
            suffix: ``.png`` added); ``AttnResult.path`` is the file written.
        layers: layer indices (None: all; negative counts from the end).
        log_scale: log colour scale (default) or linear.
        reduce, channels: Mamba-1 channel reduction / channel (or head) subset, see
            :func:`~mimetic.analysis.attention_maps`.
        max_heads: heads drawn per layer (the maps keep all of them).
        seed: the task sequence's seed.
        task_kwargs: the task's knobs, e.g. ``{"copy_len": 32}`` (only with a task name).
        max_bytes: memory limit of the maps (``MapMemoryError`` above it).
        title: the figure title (default: names the input).
        device: where to run (default: the model's device; CPU for a checkpoint).

    Returns:
        :class:`AttnResult`; ``result.lines()`` gives one summary line per layer
        (``uniform_causal`` and ``identity`` overlaps, max over heads, and for the copy task
        ``copy``: the mass fraction on the matching token, offset copy_len + 1, on the
        copied half).

    Raises:
        TypeError / ValueError / IndexError for a bad model, input or layer index;
        ``FileNotFoundError`` for a missing checkpoint; ``MapMemoryError`` over ``max_bytes``.
    """
    out_png = _png_path(out_png)
    model = _load_model(model, device)
    ids, labels, marks, task = _parse_inputs(inputs, model.config.vocab_size, seed, task_kwargs)
    maps = attention_maps(model, ids, layers=layers, reduce=reduce, channels=channels,
                          max_bytes=max_bytes)
    kinds = {i: layer_kind(model.backbone.layers[i].mixer) for i in maps}
    summary = {}
    for i, m in maps.items():
        s = {p: map_summary(m, p, heads="max") for p in ("uniform_causal", "identity")}
        if task is not None and task.name == "copy":
            n = task.copy_len
            s["copy"] = map_summary(m, "shifted_diagonal", offset=n + 1, rows=slice(n + 1, None),
                                    heads="max")
        summary[i] = s
    if title is None:
        what = task.name if task is not None else "input"
        title = f"attention maps on {what} (length {ids.shape[1]})"
    labelled = {f"layer {i} ({kinds[i]})": m for i, m in maps.items()}
    path = plot_attention_maps(labelled, out_png, log_scale=log_scale, tokens=labels,
                               title=title, max_heads=max_heads, marks=marks)
    return AttnResult(path=path, maps=maps, input_ids=ids, kinds=kinds, summary=summary)
