"""Inference cache: per-layer recurrent state (Mamba) or key/value buffers (attention)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SSMState:
    """A Mamba layer's decoding state. conv_state: (batch, conv_dim, d_conv-1), the last
    inputs of the conv; ssm_state: (batch, d_inner, d_state) for Mamba-1 or
    (batch, nheads, headdim, d_state) for Mamba-2, float32 unless allocated otherwise."""

    conv_state: torch.Tensor
    ssm_state: torch.Tensor
    seqlen_offset: int = 0


@dataclass
class KVState:
    """An attention layer's cache: key, value (batch, max_seqlen, heads_kv, head_dim)."""

    key: torch.Tensor
    value: torch.Tensor
    seqlen_offset: int = 0


@dataclass
class InferenceCache:
    """Everything a model needs to continue a batch of sequences token by token."""

    batch_size: int
    max_seqlen: int
    layers: list = field(default_factory=list)
    seqlen_offset: int = 0

    def advance(self, n: int) -> None:
        """Record that ``n`` more tokens have been consumed by every layer."""
        self.seqlen_offset += n
        for state in self.layers:
            state.seqlen_offset = self.seqlen_offset
