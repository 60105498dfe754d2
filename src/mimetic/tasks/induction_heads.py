"""Induction heads (Olsson et al. 2022; the synthetic version of the H3/Mamba papers)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Batch, Task, _check_batch_size, register_task


@register_task
@dataclass(frozen=True)
class InductionHeadsTask(Task):
    """Recall the token that followed a special token, when the special token reappears.

    Token ids (V = ``vocab_size``): ``0 .. V-2`` ordinary tokens, ``V-1`` = special token.

    Format (L = ``seq_len``):

    * i.i.d. uniform ordinary tokens everywhere, except
    * position p (uniform in ``0 .. L-3``) holds the special token, and
    * the last position ``L-1`` holds the special token again.
    * The special token appears exactly these two times. The answer is the token at ``p+1``
      (an ordinary token, ``p+1 <= L-2``); ``targets[:, L-1]`` is that token and ``loss_mask``
      is True only at ``L-1``. Unscored targets are the next input token (the last one is 0).

    Defaults follow the Mamba paper (vocabulary 16, training length 256).
    """

    name = "induction_heads"

    seq_len: int = 256
    vocab_size: int = 16

    @property
    def special(self) -> int:
        return self.vocab_size - 1

    def _validate(self) -> None:
        if self.vocab_size < 3:
            raise ValueError(
                f"induction_heads: vocab_size={self.vocab_size} too small, need >= 3 "
                "(special token and at least two ordinary tokens)"
            )
        if self.seq_len < 3:
            raise ValueError(
                f"induction_heads: seq_len={self.seq_len} too short, need >= 3 "
                "(special, answer, special)"
            )

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """(input_ids, targets, loss_mask), each (B, seq_len); see the class docstring."""
        _check_batch_size(batch_size)
        B, L = batch_size, self.seq_len
        input_ids = torch.randint(0, self.vocab_size - 1, (B, L), generator=generator)
        p = torch.randint(0, L - 2, (B, 1), generator=generator)
        input_ids.scatter_(1, p, self.special)
        input_ids[:, -1] = self.special
        answer = input_ids.gather(1, p + 1).squeeze(1)

        targets = torch.empty_like(input_ids)
        targets[:, :-1] = input_ids[:, 1:]
        targets[:, -1] = answer
        loss_mask = torch.zeros(B, L, dtype=torch.bool)
        loss_mask[:, -1] = True
        return input_ids, targets, loss_mask
