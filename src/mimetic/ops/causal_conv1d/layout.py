"""Memory layouts of the conv's (batch, dim, L) tensors, shared by the GPU backends
(``triton.py``, ``cuda.py``): which layout x has, new tensors and copies in it, and the
final conv state."""
from __future__ import annotations

import torch


def channels_last(x: torch.Tensor) -> bool:
    """x (batch, dim, L) is (batch, L, dim) storage seen through a transpose."""
    return x.stride(1) == 1 and x.stride(2) != 1


def like(x: torch.Tensor, dtype=None, n: int | None = None) -> torch.Tensor:
    """A new (batch, dim, n) tensor (n: x's L by default) stored like x: channels last when
    x's channels are (batch, L, dim) storage seen through a transpose, else contiguous."""
    batch, dim, L = x.shape
    n = L if n is None else n
    if channels_last(x):
        return torch.empty(batch, n, dim, device=x.device, dtype=dtype or x.dtype).transpose(1, 2)
    return torch.empty(batch, dim, n, device=x.device, dtype=dtype or x.dtype)


def in_layout(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t (batch, dim, n) as is when its unit stride is along x's unit-stride dimension,
    else a copy in x's layout (the kernels address every tensor through its strides, but
    tile and vectorize for x's layout)."""
    if t.stride(1 if channels_last(x) else 2) == 1:
        return t
    return like(x, t.dtype, t.shape[2]).copy_(t)


def final_states(x: torch.Tensor, initial_states: torch.Tensor | None, width: int) -> torch.Tensor:
    """The last width-1 inputs (batch, dim, width-1) in x's dtype, reaching back into the
    initial states (zeros if None) when L < width-1: the conv state to decode from."""
    past = (initial_states.to(x.dtype) if initial_states is not None
            else x.new_zeros(x.shape[0], x.shape[1], width - 1))
    padded = torch.cat([past, x], dim=-1)
    return padded[:, :, padded.shape[-1] - (width - 1):]
