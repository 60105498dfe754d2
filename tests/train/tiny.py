"""Tiny models for trainer tests: fast on CPU, deterministic."""
from __future__ import annotations

import torch
from torch import nn


class TinyLM(nn.Module):
    """Embedding + linear head: ``forward(input_ids (B, L)) -> logits (B, L, V)``."""

    def __init__(self, vocab_size: int, d: int = 16, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embedding = nn.Embedding(vocab_size, d)
        self.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(self.embedding(input_ids)))


class LookbackLM(nn.Module):
    """Sees the embeddings of the last ``window`` tokens (concatenated, causal) plus dropout.

    Enough to learn copying of strings shorter than ``window``, so tests can check that training
    actually learns (and early-stops), and dropout exercises the RNG state in checkpoints.
    """

    def __init__(self, vocab_size: int, window: int = 8, d: int = 16, seed: int = 0, dropout: float = 0.1):
        super().__init__()
        torch.manual_seed(seed)
        self.window = window
        self.embedding = nn.Embedding(vocab_size, d)
        self.drop = nn.Dropout(dropout)
        self.mix = nn.Linear(window * d, 64)
        self.lm_head = nn.Linear(64, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        e = self.embedding(input_ids)  # (B, L, d)
        padded = nn.functional.pad(e, (0, 0, self.window - 1, 0))  # zeros before the start
        ctx = padded.unfold(1, self.window, 1)  # (B, L, d, window): positions t-window+1 .. t
        h = torch.relu(self.mix(self.drop(ctx.flatten(2))))
        return self.lm_head(h)
