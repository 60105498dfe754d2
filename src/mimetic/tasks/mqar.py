"""Multi-query associative recall (Arora et al. 2024, "Zoology"), in Zoology's token format."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Batch, Task, _check_batch_args, random_subset_rows_topk, register_task


@register_task
@dataclass(frozen=True)
class MQARTask(Task):
    """Key-value pairs, then queries of earlier keys; predict each queried key's value.

    Token ids (as in Zoology's ``multiquery_ar``): with V = ``vocab_size``,
    keys come from ``[1, V // 2)``, values from ``[V // 2, V)`` (disjoint halves), and token 0
    is the filler when ``random_non_queries`` is False.

    Format (P = ``num_kv_pairs``, Q = ``num_queries``, L = ``seq_len``):

    * positions ``0 .. 2P-1``: ``k_1 v_1 k_2 v_2 ... k_P v_P``; the P keys of a sequence are
      distinct (sampled without replacement), and so are the P values.
    * positions ``2P .. L-1``: the query region, cut into ``S = (L - 2P) // 2`` two-token slots
      starting at ``2P + 2g`` (g = 0 .. S-1). Slots are drawn one after another without
      replacement, each draw with probability proportional to ``(g + 1) ** (power_a - 1)``
      among the slots not yet drawn (Zoology's power law, default ``power_a = 0.01``, which
      favours the start of the region, i.e. short key-query gaps; ``power_a = 1`` is uniform).
      The j-th draw gets the query of the j-th queried pair, in pair order: with Q = P (the
      default, Zoology's only setting) pair j's key goes in the slot of draw j, exactly as
      Zoology places ``keys[j]`` at ``gaps[j]``, so earlier pairs tend to be queried earlier
      (not a uniformly random query order). With Q < P, Q distinct pairs are chosen uniformly
      and keep that rule in their pair order. The first token of a query slot is the key.
    * every other position in the query region (the second token of each slot, unused slots,
      and a trailing position when L - 2P is odd) is filler: uniform random tokens from the
      whole vocabulary ``[0, V)`` if ``random_non_queries`` (Zoology's default; fillers may thus
      coincide with keys or values, they are never scored) else token 0.
    * ``targets`` at a query position is the value paired with that key, and ``loss_mask`` is
      True exactly at the Q query positions. The answer is never shown in the input after the
      query (as in Zoology). Unscored targets are the next input token (plain next-token
      convention), which keeps ``targets`` a valid token everywhere.

    Requirements: ``num_queries <= num_kv_pairs``; ``V // 2 - 1 >= P`` distinct keys;
    ``L >= 2P + 2Q`` (room for the pairs and one slot per query). Zoology also asserts an
    even ``seq_len`` and ``vocab_size > seq_len``; those are not needed for the format and not
    enforced here (an odd L ends with one filler position). Every setting Zoology accepts gives
    the same distribution of (input, scored targets) here; the random numbers differ (torch
    generator, not numpy's global one).
    Knobs and defaults follow Zoology's defaults: ``vocab_size=8192, seq_len=64,
    num_kv_pairs=8``; ``num_queries`` defaults to ``num_kv_pairs`` (Zoology queries every key).
    """

    name = "mqar"

    num_kv_pairs: int = 8
    seq_len: int = 64
    vocab_size: int = 8192
    num_queries: int | None = None
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self) -> None:
        if self.num_queries is None:
            # A frozen dataclass: set the derived default through object.__setattr__.
            object.__setattr__(self, "num_queries", self.num_kv_pairs)
        super().__post_init__()

    @property
    def max_scored(self) -> int:
        return int(self.num_queries)  # type: ignore[arg-type]

    def _validate(self) -> None:
        P, Q, L, V = self.num_kv_pairs, self.num_queries, self.seq_len, self.vocab_size
        if not isinstance(Q, int) or isinstance(Q, bool):
            raise ValueError(f"mqar: num_queries must be an int, got {Q!r}")
        if P < 1:
            raise ValueError(f"mqar: num_kv_pairs={P} must be >= 1")
        if not 1 <= Q <= P:
            raise ValueError(f"mqar: num_queries={Q} must be between 1 and num_kv_pairs={P}")
        if V // 2 - 1 < P:
            raise ValueError(
                f"mqar: vocab_size={V} too small for num_kv_pairs={P}: keys come from "
                f"[1, vocab_size//2), need vocab_size >= {2 * (P + 1)}"
            )
        if L < 2 * P + 2 * Q:
            raise ValueError(
                f"mqar: seq_len={L} too short for num_kv_pairs={P} and num_queries={Q}: "
                f"need seq_len >= 2*num_kv_pairs + 2*num_queries = {2 * P + 2 * Q}"
            )
        if not self.power_a > 0:
            raise ValueError(f"mqar: power_a={self.power_a} must be > 0")

    def batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        """(input_ids, targets, loss_mask), each (B, seq_len); see the class docstring."""
        _check_batch_args(batch_size, generator)
        B, P, Q, L, V = batch_size, self.num_kv_pairs, self.num_queries, self.seq_len, self.vocab_size
        half = V // 2
        keys = random_subset_rows_topk(B, half - 1, P, generator) + 1  # (B, P) in [1, V//2)
        values = random_subset_rows_topk(B, V - half, P, generator) + half  # (B, P) in [V//2, V)

        if self.random_non_queries:
            input_ids = torch.randint(0, V, (B, L), generator=generator)
        else:
            input_ids = torch.zeros(B, L, dtype=torch.long)
        input_ids[:, 0 : 2 * P : 2] = keys
        input_ids[:, 1 : 2 * P : 2] = values

        # Which pairs are queried: all of them in pair order when Q == P (Zoology); else Q
        # of P uniformly, kept in pair order, so draw j always serves the j-th queried pair.
        if Q == P:
            which = torch.arange(P).expand(B, P)
        else:
            which = random_subset_rows_topk(B, P, Q, generator).sort(dim=1).values  # (B, Q)
        n_slots = (L - 2 * P) // 2
        weights = (torch.arange(1, n_slots + 1, dtype=torch.float64) ** (self.power_a - 1.0))
        # Without replacement, torch.multinomial returns the slots in draw order (successive
        # sampling, as numpy's choice(replace=False, p=...) in Zoology): column j is draw j.
        slots = torch.multinomial(
            weights.expand(B, n_slots), Q, replacement=False, generator=generator
        )  # (B, Q)
        query_pos = 2 * P + 2 * slots
        input_ids.scatter_(1, query_pos, keys.gather(1, which))

        targets = torch.empty_like(input_ids)
        targets[:, :-1] = input_ids[:, 1:]
        targets[:, -1] = 0  # nothing follows the last token; never scored (slots end <= L-1)
        targets.scatter_(1, query_pos, values.gather(1, which))
        loss_mask = torch.zeros(B, L, dtype=torch.bool)
        loss_mask.scatter_(1, query_pos, True)
        return input_ids, targets, loss_mask
