"""map_summary on maps whose answer is known by construction."""
from __future__ import annotations

import math

import pytest
import torch

from mimetic.analysis import map_summary, pattern_matrix

L = 12


def shifted(k: int, L: int = L) -> torch.Tensor:
    """Rows t >= k put all weight on t - k; earlier rows on themselves."""
    M = torch.zeros(L, L)
    for t in range(L):
        M[t, t - k if t >= k else t] = 1.0
    return M


def uniform(L: int = L) -> torch.Tensor:
    return torch.ones(L, L).tril()


def test_exact_patterns_score_one_and_others_less():
    assert map_summary(shifted(3), "shifted_diagonal", offset=3) == pytest.approx(1.0)
    assert map_summary(shifted(0), "identity") == pytest.approx(1.0)
    assert map_summary(uniform() * 5.0, "uniform_causal") == pytest.approx(1.0)  # scale-free
    assert map_summary(-uniform(), "uniform_causal") == pytest.approx(1.0)  # signs ignored
    assert map_summary(shifted(3), "shifted_diagonal", offset=2) == pytest.approx(0.0)
    assert map_summary(shifted(3), "identity") == pytest.approx(3 / L)  # rows 0..2 self-attend
    # overlap of a one-hot row with the uniform row of length t+1 is 1/(t+1)
    expected = sum(1 / (t + 1) for t in range(L)) / L
    assert map_summary(shifted(0), "uniform_causal") == pytest.approx(expected)
    assert map_summary(shifted(3), "shifted_diagonal", offset=3, metric="cosine") == pytest.approx(1.0)


def test_overlap_is_the_mass_fraction_on_the_diagonal():
    M = 0.25 * uniform() + 0.75 * torch.eye(L)  # rows: mass 0.75 + 0.25/(t+1)... normalized
    p = M / M.sum(-1, keepdim=True)
    assert map_summary(M, "identity") == pytest.approx(float(p.diagonal().mean()), rel=1e-6)
    assert map_summary(M, "identity", metric="cosine") == pytest.approx(
        float((p.diagonal() / p.norm(dim=-1)).mean()), rel=1e-6)


def test_rows_heads_batch_and_nan():
    both = torch.stack([shifted(2), uniform()])  # (heads=2, L, L)
    mean = map_summary(both, "shifted_diagonal", offset=2)
    best = map_summary(both, "shifted_diagonal", offset=2, heads="max")
    assert best == pytest.approx(1.0) and mean < best
    batched = both[None].expand(3, -1, -1, -1)
    assert map_summary(batched, "shifted_diagonal", offset=2) == pytest.approx(mean)
    # Only the later rows: the uniform head's row t puts 1/(t+1) on t - 2.
    rows = list(range(8, L))
    expected = (1 + sum(1 / (t + 1) for t in rows) / len(rows)) / 2
    assert map_summary(both, "shifted_diagonal", offset=2, rows=rows) == pytest.approx(expected)
    assert map_summary(both, "shifted_diagonal", offset=2, rows=slice(8, None)) == pytest.approx(expected)
    mask = torch.zeros(L, dtype=torch.bool)
    mask[8:] = True
    assert map_summary(both, "shifted_diagonal", offset=2, rows=mask) == pytest.approx(expected)
    assert math.isnan(map_summary(uniform(), "shifted_diagonal", offset=L))
    # All-zero rows (e.g. a dead head) are skipped rather than counted as 0 or NaN.
    M = shifted(1)
    M[5] = 0
    assert map_summary(M, "shifted_diagonal", offset=1) == pytest.approx(1.0)


def test_pattern_matrix_rows_are_distributions():
    for pattern, offset in (("uniform_causal", None), ("identity", None), ("shifted_diagonal", 4)):
        q, defined = pattern_matrix(L, pattern, offset)
        torch.testing.assert_close(q[defined].sum(-1), torch.ones(int(defined.sum())))
        assert (q.triu(1) == 0).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="pattern"):
        map_summary(uniform(), "diagonal")
    with pytest.raises(ValueError, match="offset"):
        map_summary(uniform(), "shifted_diagonal")
    with pytest.raises(ValueError, match="offset"):
        map_summary(uniform(), "shifted_diagonal", offset=-1)
    with pytest.raises(ValueError, match="metric"):
        map_summary(uniform(), "identity", metric="kl")
    with pytest.raises(ValueError, match="shape"):
        map_summary(torch.ones(3, 4), "identity")
    with pytest.raises(ValueError, match="heads"):
        map_summary(uniform(), "identity", heads="min")
