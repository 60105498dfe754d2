"""Mamba-1's projections without layout copies ("feature-major" activations).

A feature-major tensor is a (batch, f, L) view of (f, batch * L) memory (strides
(L, batch*L, 1)): W @ h^T computed as one GEMM over all batch * L tokens. Its rows are
L-contiguous (what the conv and scan kernels need) and it is a plain matrix to the GEMMs of
the projections' backward. torch.matmul(W, h^T) instead folds the batch through h's
transpose and returns ``.mT.contiguous()`` of the product (a copy), and its backward copies
the gradient back (two more).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["in_proj", "out_proj", "weight_bmm"]


def _token_matrix(t: torch.Tensor) -> torch.Tensor:
    """(batch, f, L) -> (f, batch * L): a view when t is feature-major (or a transposed
    (batch, L, f) tensor, as the CPU scan returns), else a copy."""
    batch, f, L = t.shape
    return t.permute(1, 0, 2).reshape(f, batch * L)


class _FeatureMajorLinear(torch.autograd.Function):
    """(h W^T + bias)^T split into row blocks of W: h (batch, L, d_in) -> one (batch, f_i, L)
    tensor per block, feature-major views of a single (sum f_i, batch * L) GEMM output.

    Returning the blocks from one Function (instead of ``.chunk`` of one output) lets the
    backward take each block's gradient separately: autograd's split backward would
    concatenate them first (a copy). Each gradient is read as a (f_i, batch * L) matrix
    (a view when it is feature-major, as the scan writes dz; else one copy), and the
    blocks' GEMMs write dW's rows in place and accumulate dh (addmm).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, sizes):
        batch, L, d_in = h.shape
        tokens = h.reshape(batch * L, d_in)                    # a view of a contiguous h
        if bias is None:
            out = torch.mm(weight, tokens.t())                 # (sum f_i, batch * L)
        else:
            out = torch.addmm(bias[:, None], weight, tokens.t())
        ctx.save_for_backward(tokens, weight)
        ctx.sizes, ctx.batch, ctx.has_bias = sizes, batch, bias is not None
        ctx.set_materialize_grads(False)   # an unused block's gradient stays None
        return tuple(m.view(f, batch, L).permute(1, 0, 2) for f, m in zip(sizes, out.split(sizes)))

    @staticmethod
    def backward(ctx, *grads):
        tokens, weight = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtokens = None
        dW = torch.empty_like(weight) if need_w else None
        dbias = weight.new_empty(weight.shape[0]) if need_b and ctx.has_bias else None
        row = 0
        for f, g in zip(ctx.sizes, grads):
            rows = slice(row, row + f)
            row += f
            if g is None:                                      # block unused by the loss
                for d in (dW, dbias):
                    if d is not None:
                        d[rows].zero_()
                continue
            gm = _token_matrix(g)                              # (f, batch * L)
            if need_w:
                torch.mm(gm, tokens, out=dW[rows])
            if dbias is not None:
                torch.sum(gm, 1, out=dbias[rows])
            if need_h:
                if dtokens is None:
                    dtokens = torch.mm(gm.t(), weight[rows])   # (batch * L, d_in)
                else:
                    dtokens.addmm_(gm.t(), weight[rows])
        dh = dtokens.view(ctx.batch, -1, tokens.shape[1]) if dtokens is not None else None
        return dh, dW, dbias, None


def in_proj(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             sizes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """h (batch, L, d_in) -> the row blocks ``sizes`` of h W^T + bias, each (batch, f_i, L)
    feature-major (see :class:`_FeatureMajorLinear`). Under autocast, as nn.Linear would:
    operands cast to the autocast dtype (the casts recorded by autograd), GEMMs in it."""
    device = h.device.type
    if not torch.is_autocast_enabled(device):
        return _FeatureMajorLinear.apply(h, weight, bias, sizes)
    dtype = torch.get_autocast_dtype(device)
    h, weight = h.to(dtype), weight.to(dtype)
    bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(device, enabled=False):
        return _FeatureMajorLinear.apply(h, weight, bias, sizes)


def weight_bmm(weight: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """weight (f_out, f_in) @ t (batch, f_in, L) -> (batch, f_out, L), contiguous.

    A batched GEMM over the weight expanded along batch (stride 0, no copy): it takes t
    in any L- or f-contiguous layout, and its backward gives dt the same way and dW as
    per-batch products summed (ExpandBackward). Used for x_proj and dt_proj, whose
    weights are small (their per-batch dW partials too). Under autocast the weight is
    cast before the expand (autocast would materialize the expanded copy)."""
    device = t.device.type
    if torch.is_autocast_enabled(device):
        weight = weight.to(torch.get_autocast_dtype(device))
    return torch.bmm(weight.expand(t.shape[0], -1, -1), t)


def out_proj(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y (batch, d_inner, L) -> y^T W^T + bias (batch, L, d_model), one GEMM over the
    batch * L tokens: y enters as the transpose of its (d_inner, batch * L) matrix (a view
    for the feature-major y of the Triton scan; GEMMs take transposed operands), and
    autograd's mm backward returns dy in that same feature-major layout."""
    batch, _, L = y.shape
    return F.linear(_token_matrix(y).t(), weight, bias).view(batch, L, -1)
