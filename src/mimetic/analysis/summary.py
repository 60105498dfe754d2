"""One number per layer: how much an attention map looks like a reference pattern.

Each query row t of |map| is normalized to a distribution p_t over keys s <= t (rows with
no mass are skipped). The pattern gives a distribution q_t:

* ``"shifted_diagonal"`` (with ``offset`` k >= 0): all mass on s = t - k. A copy head on
  the copy task of string length n attends from t to t - n - 1, the same token in the
  string (k = n + 1), or to t - n, the token after it, depending on how it copies. Rows
  with t < k have no target and are skipped.
* ``"identity"``: the shifted diagonal with k = 0 (each token attends to itself).
* ``"uniform_causal"``: q_t uniform over s <= t -- plain linear attention with an all-ones
  causal mask, what mimetic initialization starts from (with random C . B on top).

Metrics, per row, then averaged over rows and batch:

* ``"overlap"`` (default): sum_s min(p_t(s), q_t(s)) = 1 - total variation distance, in
  [0, 1], 1 iff p_t = q_t. For a diagonal pattern it is the *mass fraction* p_t(t - k);
  for ``uniform_causal`` it is the share of the row that is spread evenly.
* ``"cosine"``: cosine similarity of p_t and q_t (for a diagonal pattern p_t(t-k) / |p_t|).

Heads are combined by ``heads="mean"`` or ``"max"`` (does *some* head follow the pattern --
the question for a copy head among others).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .._validate import int_arg

PATTERNS = ("shifted_diagonal", "identity", "uniform_causal")
METRICS = ("overlap", "cosine")


def _as_bhll(attn_map: torch.Tensor) -> torch.Tensor:
    if attn_map.dim() not in (2, 3, 4) or attn_map.shape[-1] != attn_map.shape[-2]:
        raise ValueError("map must have shape (L, L), (heads, L, L) or (batch, heads, L, L), "
                         f"got {tuple(attn_map.shape)}")
    while attn_map.dim() < 4:
        attn_map = attn_map.unsqueeze(0)
    return attn_map


def _row_mask(L: int, rows, device) -> torch.Tensor:
    if rows is None:
        return torch.ones(L, dtype=torch.bool, device=device)
    mask = torch.zeros(L, dtype=torch.bool, device=device)
    if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
        if rows.shape != (L,):
            raise ValueError(f"a boolean rows mask must have shape ({L},), got {tuple(rows.shape)}")
        return rows.to(device)
    mask[rows if isinstance(rows, slice) else torch.as_tensor(list(rows), dtype=torch.long)] = True
    return mask


def pattern_matrix(L: int, pattern: str, offset: int | None = None,
                   device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The pattern's rows q_t as an (L, L) float32 matrix, and a (L,) bool mask of the rows
    where the pattern is defined (t >= offset for diagonals)."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    int_arg("pattern_matrix", "L", L, minimum=1)
    t = torch.arange(L, device=device)
    if pattern == "uniform_causal":
        if offset not in (None, 0):
            raise ValueError("uniform_causal takes no offset")
        causal = (t[None, :] <= t[:, None]).float()
        return causal / causal.sum(-1, keepdim=True), torch.ones(L, dtype=torch.bool, device=device)
    if pattern == "identity":
        if offset not in (None, 0):
            raise ValueError("identity is the diagonal with offset 0; use shifted_diagonal")
        offset = 0
    if offset is None or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"shifted_diagonal needs an integer offset >= 0, got {offset!r}")
    q = (t[None, :] == t[:, None] - offset).float()
    return q, t >= offset


def map_summary(attn_map: torch.Tensor, pattern: str = "uniform_causal", offset: int | None = None,
                metric: str = "overlap", rows: slice | Sequence[int] | torch.Tensor | None = None,
                heads: str = "mean") -> float:
    """How closely ``attn_map`` follows ``pattern`` (see the module docstring), in [0, 1].

    Args:
        attn_map: (L, L), (heads, L, L) or (batch, heads, L, L), e.g. one entry of
            :func:`~mimetic.analysis.attention_maps`. Signs are ignored (|map|).
        pattern: ``"shifted_diagonal"`` (needs ``offset``), ``"identity"`` or
            ``"uniform_causal"``.
        offset: k of the shifted diagonal: query t attends to key t - k.
        metric: ``"overlap"`` (mass fraction for diagonals) or ``"cosine"``.
        rows: query positions to score (a slice, indices or an (L,) bool mask), e.g. the
            copy half of a copy-task sequence; default all rows where the pattern exists.
        heads: ``"mean"`` or ``"max"`` over heads of the per-head score.

    Returns:
        A float; NaN when no row is scored (e.g. offset >= L).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if heads not in ("mean", "max"):
        raise ValueError(f"heads must be 'mean' or 'max', got {heads!r}")
    m = _as_bhll(attn_map).detach().abs().float()
    L = m.shape[-1]
    q, defined = pattern_matrix(L, pattern, offset, device=m.device)
    causal = torch.ones(L, L, dtype=torch.bool, device=m.device).tril()
    m = m * causal  # only s <= t counts, whatever the input holds above the diagonal
    mass = m.sum(-1, keepdim=True)
    p = m / mass.clamp_min(torch.finfo(m.dtype).tiny)
    if metric == "overlap":
        score = torch.minimum(p, q).sum(-1)
    else:
        score = (p * q).sum(-1) / (p.norm(dim=-1) * q.norm(dim=-1)).clamp_min(1e-30)
    use = (defined & _row_mask(L, rows, m.device))[None, None] & (mass[..., 0] > 0)
    per_head = (score * use).sum((0, 2)) / use.sum((0, 2))  # (heads,), NaN if no row
    return float(per_head.mean() if heads == "mean" else per_head.max())
