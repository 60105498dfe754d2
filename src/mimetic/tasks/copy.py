"""String copying (Jelassi et al. 2024, "Repeat After Me"), as used by the mimetic-init paper."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Batch, Task, _check_batch_args, register_task


@register_task
@dataclass(frozen=True)
class CopyTask(Task):
    """Copy a random string after a separator.

    Token ids: data tokens ``0 .. vocab-1``; ``BOS = vocab``; ``SEP = vocab + 1``;
    ``vocab_size = vocab + 2``.

    Format (n = ``copy_len``, x_i uniform i.i.d. data tokens)::

        full      = [BOS, x_1 .. x_n, SEP, x_1 .. x_n]          (length 2n + 2)
        input_ids = full[:-1]  = [BOS, x_1..x_n, SEP, x_1..x_{n-1}]   (seq_len = 2n + 1)
        targets   = full[1:]
        loss_mask = True exactly at positions n+1 .. 2n (the SEP position, which must output x_1,
                    and the n-1 copied tokens, each predicting the next); n scored tokens.

    Choices (documented because the papers differ in details): a BOS token starts every
    sequence as in Jelassi et al.; strings have a fixed length per task (no padding, so every
    sequence in a batch is scored on exactly n tokens); no EOS is predicted; the loss covers only
    the copy, not the string itself (which is unpredictable noise).

    Knobs: ``vocab`` data tokens (default 26, a small alphabet), ``copy_len`` (default 64).
    The length knob for sweeps is ``copy_len``. Jelassi et al.'s own format (strings of
    varying length packed per context, an end token, per-length evaluation) is the task
    ``copy_jelassi``.
    """

    name = "copy"
    length_knob = "copy_len"

    vocab: int = 26
    copy_len: int = 64

    def _validate(self) -> None:
        if self.vocab < 2:
            raise ValueError(f"copy: vocab={self.vocab} too small, need at least 2 data tokens")
        if self.copy_len < 1:
            raise ValueError(f"copy: copy_len={self.copy_len} must be >= 1")

    @property
    def bos(self) -> int:
        return self.vocab

    @property
    def sep(self) -> int:
        return self.vocab + 1

    @property
    def vocab_size(self) -> int:
        return self.vocab + 2

    @property
    def seq_len(self) -> int:
        return 2 * self.copy_len + 1

    @property
    def max_scored(self) -> int:
        return self.copy_len

    def with_seq_len(self, seq_len: int) -> CopyTask:
        """Copy of the task with ``2 * copy_len + 1 == seq_len`` (seq_len must be odd, >= 3)."""
        if seq_len < 3 or seq_len % 2 == 0:
            raise ValueError(
                f"copy: seq_len={seq_len} impossible, copy sequences have length 2*copy_len+1 "
                "(odd, >= 3); use with_length(copy_len) instead"
            )
        return self.with_length((seq_len - 1) // 2)  # type: ignore[return-value]

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """(input_ids, targets, loss_mask), each (B, 2*copy_len+1); see the class docstring."""
        _check_batch_args(batch_size, generator)
        n = self.copy_len
        x = torch.randint(0, self.vocab, (batch_size, n), generator=generator)
        bos = torch.full((batch_size, 1), self.bos, dtype=torch.long)
        sep = torch.full((batch_size, 1), self.sep, dtype=torch.long)
        full = torch.cat([bos, x, sep, x], dim=1)
        input_ids, targets = full[:, :-1].contiguous(), full[:, 1:].contiguous()
        loss_mask = torch.zeros(batch_size, self.seq_len, dtype=torch.bool)
        loss_mask[:, n + 1 :] = True
        return input_ids, targets, loss_mask
