"""Pre-norm residual block: residual += mixer(norm(residual)) (+ an optional MLP)."""
from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """One layer of the backbone, the ``mamba_ssm`` way: the block receives the mixer
    output of the previous block and the running residual, adds them, normalizes, and
    applies its mixer. Returns ``(hidden_states, residual)``, both (batch, L, d_model);
    the residual is kept in float32 when ``residual_in_fp32``.
    """

    def __init__(self, dim: int, mixer: nn.Module, norm: nn.Module, mlp: nn.Module | None = None,
                 norm2: nn.Module | None = None, residual_in_fp32: bool = False):
        super().__init__()
        self.mixer, self.norm, self.residual_in_fp32 = mixer, norm, residual_in_fp32
        self.mlp, self.norm2 = mlp, norm2

    def _add_norm(self, norm, hidden, residual):
        if isinstance(norm, nn.LayerNorm):
            residual = hidden if residual is None else hidden + residual
            out = norm(residual.to(norm.weight.dtype))
            return out, residual.float() if self.residual_in_fp32 else residual
        return norm(hidden, residual=residual, prenorm=True, residual_in_fp32=self.residual_in_fp32)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor | None = None, cache=None):
        hidden, residual = self._add_norm(self.norm, hidden_states, residual)
        hidden = self.mixer(hidden, cache=cache)
        if self.mlp is not None:
            hidden, residual = self._add_norm(self.norm2, hidden, residual)
            hidden = self.mlp(hidden)
        return hidden, residual
