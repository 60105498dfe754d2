"""Model hooks for the analyses: which layers, and what their mixers receive.

The maps (``maps.py``) and the separation scores (``separation.py``) are computed from a
layer's input by the layer's own weights; this module gets those inputs from a model.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..models import MambaLM


class _Captured(Exception):
    """Raised by the last hook to skip the layers after the ones asked for."""


def resolve_layers(model: nn.Module, layers: int | Iterable[int] | None) -> list[int]:
    if not isinstance(model, MambaLM):
        raise TypeError(f"attention_maps needs a MambaLM, got {type(model).__name__}")
    n = len(model.backbone.layers)
    if layers is None:
        return list(range(n))
    wanted = [layers] if isinstance(layers, int) else list(layers)
    if not wanted:
        raise ValueError("layers is empty")
    out = []
    for i in wanted:
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"layer indices must be ints, got {i!r}")
        if not -n <= i < n:
            raise IndexError(f"layer index {i} out of range: the model has {n} layers "
                             f"(0..{n - 1})")
        j = i % n
        if j not in out:
            out.append(j)
    return sorted(out)


@torch.no_grad()
def mixer_inputs(model: nn.Module, input_ids: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """What the chosen layers' mixers receive: {layer index: (batch, L, d_model)}.

    Runs ``model`` on ``input_ids`` (batch, L) with forward pre-hooks on the mixers of
    ``layers`` (resolved indices, see :func:`resolve_layers`) and stops after the last one.
    """
    mixers = {i: model.backbone.layers[i].mixer for i in layers}
    captured: dict[int, torch.Tensor] = {}

    def hook_for(i):
        def hook(module, args):
            captured[i] = args[0].detach()
            if len(captured) == len(mixers):
                raise _Captured
        return hook

    handles = [m.register_forward_pre_hook(hook_for(i)) for i, m in mixers.items()]
    try:
        model(input_ids.to(next(model.parameters()).device))
    except _Captured:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured
