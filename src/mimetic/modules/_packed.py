"""A split of the last dim whose backward costs no copy when the parts' gradients
already are the matching blocks of one tensor.

Autograd's backward of ``t.split(sizes, -1)`` concatenates the parts' gradients into a
new tensor: one pass over t's size of memory, and a kernel launch on a GPU. Where the
op consuming the parts writes their gradients as the column blocks of one buffer (the
Triton SSD scan does for Mamba-2's x | B | C, see ``mimetic.ops.ssd.triton._packed``),
that buffer is the concatenation, and :func:`split_views` returns it as is.
"""
from __future__ import annotations

import torch

__all__ = ["split_views"]


def _tiled_base(grads, shape, sizes) -> torch.Tensor | None:
    """The contiguous tensor of ``shape`` whose last-dim blocks of ``sizes`` are exactly
    ``grads`` (views of it), or None when they are not."""
    if any(g is None for g in grads):
        return None
    base = grads[0]._base
    if base is None or base.shape != shape or not base.is_contiguous():
        return None
    offset = base.storage_offset()
    for g, f in zip(grads, sizes):
        if g._base is not base or g.stride() != base.stride() or g.storage_offset() != offset:
            return None
        offset += f
    return base


class _SplitViews(torch.autograd.Function):
    """t (..., sum f_i) -> views (..., f_i); backward: the gradients' common buffer when
    they tile one (:func:`_tiled_base`), else their concatenation (zeros for a part
    without gradient), as autograd's own split backward gives."""

    @staticmethod
    def forward(ctx, t, sizes):
        ctx.sizes, ctx.shape = sizes, t.shape
        ctx.set_materialize_grads(False)
        return tuple(t.split(sizes, dim=-1))

    @staticmethod
    def backward(ctx, *grads):
        base = _tiled_base(grads, ctx.shape, ctx.sizes)
        if base is not None:
            return base, None
        like = next(g for g in grads if g is not None)
        parts = [g if g is not None else like.new_zeros((*ctx.shape[:-1], f))
                 for g, f in zip(grads, ctx.sizes)]
        return torch.cat(parts, dim=-1), None


def split_views(t: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """``t.split(sizes, dim=-1)`` (views of t (..., sum(sizes))) with a backward that
    does not copy gradients that are already one tensor's blocks (module docstring)."""
    if sum(sizes) != t.shape[-1]:
        raise ValueError(f"split_views: sizes {list(sizes)} must add up to t's last dim {t.shape[-1]}")
    return _SplitViews.apply(t, tuple(sizes))
