"""Do queries match keys? The same-token vs other-token separation of C_t . B_s.

Mimetic init ties each SSM layer's queries (C) to its keys (B) so that a position attends to
earlier positions holding the same token. Whether a tie acts can be read off the layer at
init: for pairs s < t, the scores C_t . B_s of pairs whose tokens are equal should stand out
from those of pairs whose tokens differ. The separation is that gap in standard deviations
of the other-token scores:

    separation = (mean(C_t . B_s | x_t == x_s) - mean(C_t . B_s | x_t != x_s)) / std(... | x_t != x_s)

A value near 0 means the layer cannot tell a repeated token from any other one (e.g.
Mamba-2 with only the ``in_proj`` rows tied: its B and C pass through different conv taps);
mimetic init's purpose is a clearly positive one. Tokens are the model's input tokens, so the
measure is most direct for the first layer (whose mixer input is the token's embedding).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from einops import rearrange
from torch import nn

from ..modules import Mamba, Mamba2
from .capture import mixer_inputs, resolve_layers
from .maps import scan_inputs


def bc_scores(mixer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """C_t . B_s of a Mamba or Mamba2 layer: (batch, groups, L, L) float32 (groups = 1 for
    Mamba-1, ``ngroups`` for Mamba-2), from the mixer input (batch, L, d_model)."""
    s = scan_inputs(mixer, hidden_states)
    if isinstance(mixer, Mamba):
        B, C = rearrange(s["B"], "b n l -> b 1 l n"), rearrange(s["C"], "b n l -> b 1 l n")
    else:
        B, C = rearrange(s["B"], "b l g n -> b g l n"), rearrange(s["C"], "b l g n -> b g l n")
    return (C @ B.transpose(-1, -2)).float()


def separation(scores: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Same-token vs other-token separation (see the module docstring) of ``scores``
    (batch, groups, L, L), row t holding the scores of keys s, over pairs s < t of
    ``input_ids`` (batch, L). NaN when there is no same-token or no other-token pair."""
    if scores.dim() != 4 or scores.shape[-1] != scores.shape[-2] or scores.shape[0] != input_ids.shape[0] \
            or scores.shape[-1] != input_ids.shape[-1]:
        raise ValueError(f"scores must be (batch, groups, L, L) for input_ids {tuple(input_ids.shape)}, "
                         f"got {tuple(scores.shape)}")
    L = input_ids.shape[-1]
    earlier = torch.ones(L, L, dtype=torch.bool, device=scores.device).tril(-1)
    same = (input_ids[:, :, None] == input_ids[:, None, :]).to(scores.device)
    same, other = (same & earlier)[:, None], (~same & earlier)[:, None]
    same, other = same.expand_as(scores), other.expand_as(scores)
    if not same.any() or other.sum() < 2:
        return float("nan")
    s_same, s_other = scores[same].double(), scores[other].double()
    return float((s_same.mean() - s_other.mean()) / s_other.std())


@torch.no_grad()
def bc_separation(model: nn.Module, input_ids: torch.Tensor,
                  layers: int | Iterable[int] | None = None) -> dict[int, float]:
    """The same-token vs other-token separation of C_t . B_s per SSM layer of a
    :class:`~mimetic.models.MambaLM` on ``input_ids`` (batch, L): {layer index: float}.
    ``layers``: indices as in :func:`~mimetic.analysis.attention_maps` (None: every Mamba /
    Mamba2 layer; attention layers have no B and C and are skipped)."""
    idx = resolve_layers(model, layers)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    idx = [i for i in idx if isinstance(model.backbone.layers[i].mixer, (Mamba, Mamba2))]
    if not idx:
        raise ValueError("no Mamba or Mamba2 layer among the chosen layers")
    inputs = mixer_inputs(model, input_ids, idx)
    return {i: separation(bc_scores(model.backbone.layers[i].mixer, inputs[i]), input_ids) for i in idx}
