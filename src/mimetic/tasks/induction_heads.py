"""Induction heads (Olsson et al. 2022; the synthetic version of the H3/Mamba papers)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Batch, Task, _check_batch_args, register_task


@register_task
@dataclass(frozen=True)
class InductionHeadsTask(Task):
    """Recall the token that followed a special token, when the special token reappears.

    Token ids (V = ``vocab_size``, D = ``data_vocab``): ``0 .. D-1`` ordinary tokens,
    ``V-1`` = special token; ids ``D .. V-2`` (none by default) never occur.

    Format (L = ``seq_len``, the input length):

    * i.i.d. uniform ordinary tokens everywhere, except
    * position p, uniform in ``0 .. L-4``, holds the special token, and
    * the last position ``L-1`` holds the special token again.
    * The special token appears exactly these two times. The answer is the token at ``p+1``
      (an ordinary token, ``p+1 <= L-3``); ``targets[:, L-1]`` is that token and ``loss_mask``
      is True only at ``L-1``. Unscored targets are the next input token.

    This is the H3/safari generator (``generate_induction_head``, induction length 1, one
    trigger) that the Mamba paper's Table 11 follows ("comparable to prior work", H3; Mamba's
    own script is unreleased), in its terms: safari's ``input_seq_len = n`` random tokens plus
    the final special give ``seq_len = n + 1``; its trigger position is uniform over the first
    ``n - 2`` positions (so the answer is never right before the final special); its
    vocabulary of V ids holds two special ids, the trigger and an unused no-op, so
    ``data_vocab = V - 2`` reproduces its ordinary tokens exactly. Differences kept: the loss
    covers only the answer (safari's training labels are every next token, the unpredictable
    noise included; its test scores the answer only, as here).

    Defaults: the Mamba paper's vocabulary 16 and training length 256 (read as the model's
    input length; ``seq_len = 257`` is safari's ``input_seq_len = 256``), ``data_vocab = None``
    = ``V - 1`` (every id but the special one). Table 11 tests at 2^6 .. 2^20 (``with_length``;
    generation is O(B L), a batch of 8 at 2^20 takes well under a second on a CPU).
    """

    name = "induction_heads"

    seq_len: int = 256
    vocab_size: int = 16
    data_vocab: int | None = None

    def __post_init__(self) -> None:
        if self.data_vocab is None and isinstance(self.vocab_size, int):  # else the type check names it
            # A frozen dataclass: set the derived default through object.__setattr__.
            object.__setattr__(self, "data_vocab", self.vocab_size - 1)
        super().__post_init__()

    @property
    def max_scored(self) -> int:
        return 1

    @property
    def special(self) -> int:
        return self.vocab_size - 1

    def _validate(self) -> None:
        D = self.data_vocab
        if isinstance(D, bool) or not isinstance(D, int):
            raise ValueError(f"induction_heads: data_vocab must be an int, got {D!r}")
        if self.vocab_size < 3:
            raise ValueError(
                f"induction_heads: vocab_size={self.vocab_size} too small, need >= 3 "
                "(special token and at least two ordinary tokens)"
            )
        if not 2 <= D <= self.vocab_size - 1:
            raise ValueError(
                f"induction_heads: data_vocab={D} must be between 2 and vocab_size-1="
                f"{self.vocab_size - 1} (the special token takes the last id)"
            )
        if self.seq_len < 4:
            raise ValueError(
                f"induction_heads: seq_len={self.seq_len} too short, need >= 4 "
                "(special, answer, one token, special)"
            )

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """(input_ids, targets, loss_mask), each (B, seq_len); see the class docstring."""
        _check_batch_args(batch_size, generator)
        B, L = batch_size, self.seq_len
        input_ids = torch.randint(0, self.data_vocab, (B, L), generator=generator)
        p = torch.randint(0, L - 3, (B, 1), generator=generator)
        input_ids.scatter_(1, p, self.special)
        input_ids[:, -1] = self.special
        answer = input_ids.gather(1, p + 1).squeeze(1)

        targets = torch.empty_like(input_ids)
        targets[:, :-1] = input_ids[:, 1:]
        targets[:, -1] = answer
        loss_mask = torch.zeros(B, L, dtype=torch.bool)
        loss_mask[:, -1] = True
        return input_ids, targets, loss_mask
