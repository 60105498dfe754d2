"""Gated MLP (SwiGLU), used when ``d_intermediate > 0`` as in ``mamba_ssm``."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .._validate import bool_arg, int_arg


class GatedMLP(nn.Module):
    """fc1: d -> 2*hidden (value, gate); out = fc2(value * silu(gate)). (batch, L, d) -> same."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = False,
                 device=None, dtype=None):
        super().__init__()
        int_arg("GatedMLP", "in_features", in_features, minimum=1)
        int_arg("GatedMLP", "hidden_features", hidden_features, minimum=1)
        bool_arg("GatedMLP", "bias", bias)
        self.fc1 = nn.Linear(in_features, 2 * hidden_features, bias=bias, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x):
        value, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(value * F.silu(gate))
