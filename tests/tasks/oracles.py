"""Oracle "models" that solve each task from the input alone, by the documented format rule.

They double as an executable specification of the formats: if a generator drifted from its
docstring, the oracle would stop scoring 1.0.
"""
from __future__ import annotations

import torch

from mimetic.tasks import CopyTask, InductionHeadsTask, JelassiCopyTask, MQARTask, SelectiveCopyTask, Task


def _one_hot(pred: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(pred, vocab_size).float() * 30.0


def oracle_predictions(task: Task, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) predicted token per position, correct at every scored position."""
    B, L = input_ids.shape
    pred = torch.zeros(B, L, dtype=torch.long)
    for b in range(B):
        x = input_ids[b].tolist()
        if isinstance(task, CopyTask):
            # After the separator at position n+1, output the token n positions back + 1.
            n = x.index(task.sep) - 1
            for t in range(n + 1, L):
                pred[b, t] = x[t - n]
        elif isinstance(task, JelassiCopyTask):
            # At position t: the string is between the last '$' and the last '|' at or before
            # t; offset i past that '|' predicts letter i, offset n the end token.
            dollar = sep = None
            for t in range(L):
                if x[t] == task.bos:
                    dollar, sep = t, None
                elif x[t] == task.sep:
                    sep = t
                if dollar is not None and sep is not None:
                    n, i = sep - dollar - 1, t - sep
                    if i < n:
                        pred[b, t] = x[dollar + 1 + i]
                    elif i == n:
                        pred[b, t] = task.end
        elif isinstance(task, MQARTask):
            P = task.num_kv_pairs
            table = {x[2 * i]: x[2 * i + 1] for i in range(P)}
            for t in range(2 * P, L):
                pred[b, t] = table.get(x[t], 0)
        elif isinstance(task, SelectiveCopyTask):
            R = task.seq_len - task.num_tokens
            data = [v for v in x[:R] if v != task.blank]
            for i, v in enumerate(data):
                pred[b, R + i] = v
        elif isinstance(task, InductionHeadsTask):
            p = x.index(task.special)
            pred[b, L - 1] = x[p + 1]
        else:  # pragma: no cover
            raise TypeError(task)
    return pred


class OracleModel(torch.nn.Module):
    def __init__(self, task: Task):
        super().__init__()
        self.task = task

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return _one_hot(oracle_predictions(self.task, input_ids.cpu()), self.task.vocab_size)


class RandomModel(torch.nn.Module):
    """Seeded random logits: a model that knows nothing."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.g = torch.Generator().manual_seed(123)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.randn(*input_ids.shape, self.vocab_size, generator=self.g)
