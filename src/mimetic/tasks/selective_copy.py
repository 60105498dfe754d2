"""Selective copying (Gu & Dao 2023, the Mamba paper; S4 repository's "selective" copying data)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Batch, Task, _check_batch_args, random_subset_rows, register_task


@register_task
@dataclass(frozen=True)
class SelectiveCopyTask(Task):
    """Data tokens scattered among blanks; after the scattered region, output them in order.

    Token ids (V = ``vocab_size``): ``0`` = blank (noise), ``1 .. V-2`` = data tokens,
    ``V-1`` = marker.

    Format (M = ``num_tokens``, R = ``seq_len - M`` the length of the scattered region):

    * positions ``0 .. R-1``: blanks, except M positions (distinct, uniformly random, kept in
      increasing order) holding i.i.d. uniform data tokens d_1 .. d_M;
    * positions ``R .. R+M-1``: M marker tokens.
    * ``targets[R + i] = d_{i+1}`` and ``loss_mask`` is True exactly on the M marker positions:
      at the i-th marker the model must output the i-th data token (as in the S4/Mamba setup,
      where the outputs are read at the marker positions; the inputs never contain the
      answers after the region). Unscored targets are the next input token.

    This is the S4 repository's copying generator with ``variable=True`` (the "selective"
    variant the Mamba paper builds on; the Mamba authors did not release their own script), in
    its terms ``l_memorize = num_tokens``, ``n_tokens = vocab_size`` and ``l_noise = seq_len -
    2 * num_tokens``: data tokens uniform over ``[1, V-1)``, their M positions a uniformly random
    sorted subset of the first ``l_noise + M`` positions, then M markers ``V-1``, outputs read at
    the markers. Only the loss and metrics are computed at the markers (the model emits logits
    everywhere).

    Defaults are the Mamba paper's Table 1 setting: vocabulary 16 including the blank ("noise")
    token (so the marker and 14 data values), 16 tokens to memorize, sequence length 4096. The
    paper does not say whether 4096 is the input length or S4's ``l_noise``; the default reads
    it as the input length (``l_noise = 4064``); ``seq_len = 4128`` gives the other reading.
    Table 1 trains 2 layers, D = 64, batch 64, constant lr 1e-4, 400K steps (see
    ``experiments/mamba_selective_copy.toml``).
    """

    name = "selective_copy"

    seq_len: int = 4096
    num_tokens: int = 16
    vocab_size: int = 16

    @property
    def max_scored(self) -> int:
        return self.num_tokens

    @property
    def blank(self) -> int:
        return 0

    @property
    def marker(self) -> int:
        return self.vocab_size - 1

    def _validate(self) -> None:
        if self.vocab_size < 3:
            raise ValueError(
                f"selective_copy: vocab_size={self.vocab_size} too small, need >= 3 "
                "(blank, marker and at least one data token)"
            )
        if self.num_tokens < 1:
            raise ValueError(f"selective_copy: num_tokens={self.num_tokens} must be >= 1")
        if self.seq_len < 2 * self.num_tokens:
            raise ValueError(
                f"selective_copy: seq_len={self.seq_len} too short for num_tokens="
                f"{self.num_tokens}: need seq_len >= 2*num_tokens = {2 * self.num_tokens}"
            )

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """(input_ids, targets, loss_mask), each (B, seq_len); see the class docstring."""
        _check_batch_args(batch_size, generator)
        B, M, L = batch_size, self.num_tokens, self.seq_len
        R = L - M
        data = torch.randint(1, self.vocab_size - 1, (B, M), generator=generator)
        positions = random_subset_rows(B, R, M, generator).sort(dim=1).values  # (B, M)
        input_ids = torch.full((B, L), self.blank, dtype=torch.long)
        input_ids.scatter_(1, positions, data)
        input_ids[:, R:] = self.marker

        targets = torch.empty_like(input_ids)
        targets[:, :-1] = input_ids[:, 1:]
        targets[:, -1] = self.blank
        targets[:, R:] = data
        loss_mask = torch.zeros(B, L, dtype=torch.bool)
        loss_mask[:, R:] = True
        return input_ids, targets, loss_mask
