"""String copying in the format of Jelassi et al. 2024 ("Repeat After Me"): variable-length
strings, several examples packed per context, per-length evaluation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .base import Batch, Task, _check_batch_args, register_task

#: Jelassi et al.'s context length (their training contexts are 220 tokens).
DEFAULT_CONTEXT = 220


@register_task
@dataclass(frozen=True)
class JelassiCopyTask(Task):
    """Copy strings of random length, several ``$ s | s .`` examples packed per context.

    A separate task rather than an option of ``copy``: the two differ in what the length knob
    means (``copy``: the one fixed string length, which sets ``seq_len``; here: the longest
    training string, in a context of its own length), in their tokens (two more here: the end
    token and the pad) and in how many tokens a sequence scores (fixed there, varying here).
    As one class every knob would mean something different per mode.

    Token ids: letters ``0 .. vocab-1``; ``BOS '$' = vocab``; ``SEP '|' = vocab + 1``;
    ``END '.' = vocab + 2``; ``PAD '*' = vocab + 3``; ``vocab_size = vocab + 4``.

    One example, for a string s = s_1 .. s_n of i.i.d. uniform letters (length 2n + 3)::

        $ s_1 .. s_n | s_1 .. s_n .

    Context (L = ``seq_len``), ``packed=True`` (training, as Jelassi et al.'s training data):
    examples follow each other from position 0, each with its own length n drawn uniformly
    from ``[min_len, max_len]``; the first example that would cross the end of the context
    is cut at position L (its visible prefix stays in the input, never scored), so there is no
    padding. ``packed=False`` (Jelassi et al.'s evaluation data): one example at position 0,
    then ``PAD`` up to L.

    ``input_ids`` is the context (B, L); ``targets`` is the next token (``targets[:, t] =
    input_ids[:, t+1]``; the last position's target is ``PAD``). ``loss_mask`` is True, for
    every complete example, at the n + 1 positions from its ``|`` to the last copied letter:
    they predict the copied string and the end token '.' (``score_end=False``: the n letters
    only, which is how Jelassi et al. score strings at evaluation). The first string, being
    random, is never scored.

    Knobs: ``vocab`` letters (default 26, lowercase a-z); ``min_len``, ``max_len`` string
    lengths (defaults 5 and 50: train on [5, 50], test up to 100); ``context_len`` (None:
    ``max(220, 2 * (2 * max_len + 3))``, Jelassi et al.'s 220 while two longest examples fit,
    else the smallest context that holds two, so a context always packs several examples);
    ``packed``; ``score_end``. The length knob for sweeps is ``max_len``; the evaluation task
    at length n (``length_eval_task``) is the unpacked format with strings of exactly n letters,
    in a context at least as long as the training one, so ``evaluate`` gives Jelassi et al.'s
    metrics: ``seq_acc`` the string exact match, ``token_acc`` the character accuracy.
    """

    name = "copy_jelassi"
    length_knob = "max_len"

    vocab: int = 26
    min_len: int = 5
    max_len: int = 50
    context_len: int | None = None
    packed: bool = True
    score_end: bool = True

    def _validate(self) -> None:
        if self.vocab < 2:
            raise ValueError(f"copy_jelassi: vocab={self.vocab} too small, need at least 2 letters")
        if self.min_len < 1:
            raise ValueError(f"copy_jelassi: min_len={self.min_len} must be >= 1")
        if self.max_len < self.min_len:
            raise ValueError(f"copy_jelassi: max_len={self.max_len} must be >= min_len={self.min_len}")
        c = self.context_len
        if c is not None and (isinstance(c, bool) or not isinstance(c, int)):
            raise ValueError(f"copy_jelassi: context_len must be an int or None, got {c!r}")
        need = 2 * self.max_len + 3
        if self.seq_len < need:
            raise ValueError(
                f"copy_jelassi: context_len={self.seq_len} too short for max_len={self.max_len}: "
                f"an example of max_len letters has 2*max_len+3 = {need} tokens"
            )
        for knob in ("packed", "score_end"):
            if not isinstance(getattr(self, knob), bool):
                raise ValueError(f"copy_jelassi: {knob} must be true or false, got {getattr(self, knob)!r}")

    @property
    def bos(self) -> int:
        return self.vocab

    @property
    def sep(self) -> int:
        return self.vocab + 1

    @property
    def end(self) -> int:
        return self.vocab + 2

    @property
    def pad(self) -> int:
        return self.vocab + 3

    @property
    def vocab_size(self) -> int:
        return self.vocab + 4

    @property
    def seq_len(self) -> int:
        if self.context_len is not None:
            return self.context_len
        return max(DEFAULT_CONTEXT, 2 * (2 * self.max_len + 3))

    @property
    def max_scored(self) -> int:
        # An example of 2n+3 tokens scores at most n+1 of them, fewer than half.
        return self.seq_len // 2

    def with_seq_len(self, seq_len: int) -> JelassiCopyTask:
        """A copy with the context length set to ``seq_len`` (same string lengths)."""
        return dataclasses.replace(self, context_len=seq_len)

    def length_eval_task(self, length: int) -> JelassiCopyTask:
        """Jelassi et al.'s evaluation at string length ``length``: one example of exactly
        ``length`` letters per context, padded, letters scored (not the end token), in a
        context ``max(seq_len, 2 * length + 3)`` long."""
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"copy_jelassi: evaluation length must be an int >= 1, got {length!r}")
        return dataclasses.replace(
            self, min_len=length, max_len=length, packed=False, score_end=False,
            context_len=max(self.seq_len, 2 * length + 3),
        )

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """(input_ids, targets, loss_mask), each (B, seq_len); see the class docstring."""
        _check_batch_args(batch_size, generator)
        B, L = batch_size, self.seq_len
        # Enough examples per row to overrun the context whatever their lengths (each is at
        # least 2*min_len+3 long), so every position belongs to some example; a fixed count
        # keeps the draws, and thus the batch, a function of the generator alone.
        K = L // (2 * self.min_len + 3) + 1 if self.packed else 1
        n = torch.randint(self.min_len, self.max_len + 1, (B, K), generator=generator)
        letters = torch.randint(0, self.vocab, (B, L), generator=generator)

        ends = (2 * n + 3).cumsum(dim=1)  # (B, K) exclusive end of each example
        t = torch.arange(L).expand(B, L)
        k = torch.searchsorted(ends, t.contiguous(), right=True).clamp_max(K - 1)  # example of t
        start = ends.gather(1, k) - (2 * n.gather(1, k) + 3)
        r = t - start  # offset of t inside its example
        nk = n.gather(1, k)

        # Position t of the copy repeats the letter n+1 positions earlier (at offset r-n-1).
        copied = letters.gather(1, (t - nk - 1).clamp_min(0))
        x = torch.where(r == 0, self.bos, letters)
        x = torch.where(r == nk + 1, self.sep, x)
        in_copy = (r >= nk + 2) & (r <= 2 * nk + 1)
        x = torch.where(in_copy, copied, x)
        x = torch.where(r == 2 * nk + 2, self.end, x)
        inside = r < 2 * nk + 3  # False only past the single example of an unpacked context
        x = torch.where(inside, x, self.pad)

        complete = ends.gather(1, k) <= L
        last_scored = 2 * nk + 1 if self.score_end else 2 * nk
        loss_mask = complete & inside & (r >= nk + 1) & (r <= last_scored)

        targets = torch.empty_like(x)
        targets[:, :-1] = x[:, 1:]
        targets[:, -1] = self.pad
        return x, targets, loss_mask
