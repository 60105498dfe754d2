"""The forward that the recurrent mixers (Mamba2, LinearAttention) share: check the input,
advance a warm decoding cache one token, or run the parallel scan (split over the batch on
the CPU when there is no cache to fill)."""
from __future__ import annotations

import torch
from torch import nn

from ._args import check_hidden
from .batch_parallel import batch_parallel


def recurrent_forward(layer: nn.Module, name: str, u: torch.Tensor, cache=None) -> torch.Tensor:
    """``layer``'s output for u (batch, L, d_model) -> (batch, L, d_model): ``layer.step`` on
    a warm ``cache`` (one token), else ``layer._forward`` (filling ``cache`` if given)."""
    check_hidden(name, u, layer.d_model, layer.in_proj.weight)
    if cache is not None and cache.seqlen_offset > 0:
        if u.shape[1] != 1:
            raise ValueError("a warm cache can only be advanced one token at a time")
        return layer.step(u, cache)
    if cache is None:
        return batch_parallel(layer, layer._forward, u)
    return layer._forward(u, cache)
