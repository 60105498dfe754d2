"""Implicit attention maps of Mamba layers (and the softmax maps of attention layers).

A Mamba layer is a gated linear attention. Without the gate and the skip ``D``, its scan is
``y = M x`` with ``x`` the conv output (the "values") and ``M`` lower triangular:

* Mamba-1, per channel d (decay per state n, so the sum over n stays inside):
  ``M_d[t, s] = sum_n C_t[n] * exp(sum_{k=s+1..t} delta_k[d] A[d, n]) * B_s[n] * delta_s[d]``
* Mamba-2, per head h (scalar decay):
  ``M_h[t, s] = (C_t . B_s) * exp(sum_{k=s+1..t} dt_k[h] A[h]) * dt_s[h]``
  with C, B of the head's group.
* Attention (the MHA baseline): ``softmax(q_t . k_s * scale)`` over ``s <= t``, per head.

Numerics: the decay product is ``exp(cum[t] - cum[s])`` with ``cum`` the running sum of
``delta * A`` (in float64), masked to ``-inf`` above the diagonal *before* the exp. Forming
``exp(cum[t]) / exp(cum[s])`` instead under- and overflows within a few hundred steps of a
fast-decaying channel. Maps are built in tiles of query rows (and Mamba-1 channel chunks)
so the working memory stays near ``work_bytes`` whatever the length; the result itself,
``(batch, heads, L, L)`` float32, must fit in ``max_bytes``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from einops import rearrange
from torch import nn

from ..layer_kinds import ATTENTION, MAMBA1, MAMBA2
from ..modules import MHA, Mamba, Mamba2
from ..ops._time_step import process_dt
from .capture import mixer_inputs, resolve_layers

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB for the returned maps
DEFAULT_WORK_BYTES = 64 << 20  # scratch memory per tile
REDUCTIONS = ("mean_abs", "mean", "none")



class MapMemoryError(ValueError):
    """The requested maps would not fit in ``max_bytes``."""


# ---- a layer's scan inputs, from the layer itself -------------------------------------------


@torch.no_grad()
def scan_inputs(mixer: nn.Module, hidden_states: torch.Tensor) -> dict[str, torch.Tensor]:
    """What a Mamba layer feeds its scan, with the time step transformed, in float32.

    Args:
        mixer: a :class:`~mimetic.modules.Mamba` or :class:`~mimetic.modules.Mamba2`.
        hidden_states: the mixer input (batch, L, d_model) (after the block's norm).

    Returns (float32, or float64 for float64 layers), for Mamba-1:
        ``x`` (batch, d_inner, L) conv output, ``delta`` (batch, d_inner, L) after bias and
        softplus, ``A`` (d_inner, d_state), ``B``, ``C`` (batch, d_state, L), ``D``
        (d_inner,), ``z`` (batch, d_inner, L);
    for Mamba-2:
        ``x`` (batch, L, H, P), ``dt`` (batch, L, H) after bias, softplus and ``dt_limit``,
        ``A`` (H,), ``B``, ``C`` (batch, L, G, N), ``D`` (H,) or (H, P), ``z`` (batch, L, d_inner).
    These are exactly the arguments of ``selective_scan_ref`` / ``ssd_scan_ref`` (with
    ``delta_softplus`` / ``dt_softplus`` off, since they are already applied). The layer
    computes them (:meth:`Mamba.scan_inputs`, :meth:`Mamba2.scan_inputs`); this only
    applies the time-step transform (:func:`mimetic.ops._time_step.process_dt`) and casts.
    """
    u = hidden_states
    if u.dim() != 3 or u.shape[-1] != mixer.d_model:
        raise ValueError(f"mixer input must be (batch, L, {mixer.d_model}), got {tuple(u.shape)}")
    compute = torch.float64 if mixer.out_proj.weight.dtype == torch.float64 else torch.float32
    kind = layer_kind(mixer)
    if kind == MAMBA1:
        s = mixer.scan_inputs(u)
        delta = process_dt(s["delta"], s["delta_bias"][:, None], s["delta_softplus"],
                           dtype=compute)
        return dict(x=s["u"].to(compute), delta=delta, A=s["A"].to(compute),
                    B=s["B"].to(compute), C=s["C"].to(compute), D=s["D"].to(compute),
                    z=s["z"].to(compute))
    if kind == MAMBA2:
        s, z = mixer.scan_inputs(u)
        dt = process_dt(s["dt"], s["dt_bias"], s["dt_softplus"], s["dt_limit"], compute)
        return dict(x=s["x"].to(compute), dt=dt, A=s["A"].to(compute), B=s["B"].to(compute),
                    C=s["C"].to(compute), D=s["D"].to(compute), z=z.to(compute))
    raise TypeError(f"scan_inputs needs a Mamba or Mamba2 layer, got {type(mixer).__name__}")


# ---- maps from scan inputs (pure tensor functions) -----------------------------------------


def _query_tile(per_query_bytes: int, L: int, tile_size: int | None, work_bytes: int) -> int:
    """Query rows per tile: ``tile_size`` if given, else as many as fit in ``work_bytes``."""
    if tile_size is not None:
        if tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {tile_size}")
        return min(tile_size, max(L, 1))
    return max(1, min(L, work_bytes // max(per_query_bytes, 1)))


def _exp_(x: torch.Tensor) -> torch.Tensor:
    """exp(x) in place, for a fresh x <= 0, with results below the dtype's smallest normal
    number set to 0. Why: exp landing in the subnormal range runs 10-30x slower on CPUs,
    and far-decayed entries (< 1e-38 in float32) carry no information."""
    return x.masked_fill_(x < math.log(torch.finfo(x.dtype).tiny), -math.inf).exp_()


def _decay(cum: torch.Tensor, t0: int, t1: int, dtype: torch.dtype) -> torch.Tensor:
    """exp(cum[..., t] - cum[..., s]) for queries t in [t0, t1) and keys s in [0, t1),
    zero where s > t. cum (..., L) float64 -> (..., t1 - t0, t1) in ``dtype``."""
    # The difference is taken in float64 (cum can be large and the terms cancel); the
    # exp runs in the output dtype, where the difference is exact enough.
    diff = (cum[..., t0:t1, None] - cum[..., None, :t1]).to(dtype)
    t = torch.arange(t0, t1, device=cum.device)[:, None]
    s = torch.arange(t1, device=cum.device)[None, :]
    # Mask before the exp: above the diagonal diff > 0 can be huge and would overflow.
    return _exp_(diff.masked_fill_(s > t, -math.inf))


def selective_scan_map(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       reduce: str = "mean_abs", channels: Sequence[int] | None = None,
                       tile_size: int | None = None,
                       work_bytes: int = DEFAULT_WORK_BYTES) -> torch.Tensor:
    """Mamba-1 maps ``M_d`` (see the module docstring) from the scan inputs.

    Args:
        delta: (batch, d_inner, L), after bias and softplus. A: (d_inner, d_state).
        B, C: (batch, d_state, L).
        reduce: how to combine the d_inner channel maps into one "head":
            ``"mean_abs"`` (default) mean over channels of |M_d| -- how strongly the layer
            as a whole mixes position s into t, signs ignored (channel maps differ in sign,
            so a plain mean cancels); ``"mean"`` the signed mean; ``"none"`` every channel
            as its own head (d_inner heads).
        channels: channel indices to return as heads, unreduced (overrides ``reduce``).
        tile_size: query rows per tile (None: 32, a balance between the direct diagonal
            blocks, cost ~ N L tile_size per channel, and the keys decayed to each tile's
            start, ~ N L^2 / (2 tile_size)).

    Returns:
        (batch, heads, L, L) float32 (float64 for float64 inputs), zero above the diagonal;
        heads = 1 for ``mean_abs`` / ``mean``, d_inner for ``none``, len(channels) otherwise.

    Method: the decay depends on the state n, so M_d[t, s] = sum_n q_t[n] k_s[n] needs the
    decay split between the two sides at a point e with s <= e <= t. For a tile of queries
    starting at t0 and the keys before it, e = t0 - 1: q_t = C_t exp(cum[t] - cum[e]) and
    k_s = B_s exp(cum[e] - cum[s]), both exponents <= 0 (no overflow; a factor that
    underflows belongs to an entry that is below float precision anyway), and the block is
    one matmul over n. The diagonal block (s, t in the tile) is computed directly with
    masked differences.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    batch, d_inner, L = delta.shape
    N = A.shape[1]
    out_dtype = torch.float64 if delta.dtype == torch.float64 else torch.float32
    if channels is not None:
        idx = torch.as_tensor(list(channels), dtype=torch.long, device=delta.device)
        if idx.numel() == 0 or idx.min() < 0 or idx.max() >= d_inner:
            raise ValueError(f"channels must be a non-empty list of indices in [0, {d_inner}), "
                             f"got {list(channels)}")
        reduce = "none"
    else:
        idx = torch.arange(d_inner, device=delta.device)
    heads = 1 if reduce != "none" else idx.numel()
    out = torch.zeros(batch, heads, L, L, dtype=out_dtype, device=delta.device)
    if L == 0:
        return out
    if tile_size is None:
        tile_size = 32
    Q = _query_tile(0, L, tile_size, work_bytes)
    nq = -(-L // Q)
    # Scratch per channel: cum (float64, N x L), the keys decayed to the tile start (float64
    # difference + out dtype, N x L), the diagonal block (N x Q x Q) and one row block (Q x L).
    per_channel = batch * (N * L * 20 + N * Q * Q * 12 + Q * L * 8)
    dc = max(1, min(idx.numel(), work_bytes // max(per_channel, 1)))
    Bc, Cc = B.to(out_dtype), C.to(out_dtype)
    for c0 in range(0, idx.numel(), dc):
        ch = idx[c0:c0 + dc]
        dl = delta[:, ch].double()  # (batch, dc, L)
        cum = torch.cumsum(dl[:, :, None, :] * A[ch].double()[None, :, :, None], dim=-1)
        for j in range(nq):
            t0, t1 = j * Q, min(L, (j + 1) * Q)
            M = torch.empty(batch, len(ch), t1 - t0, t1, dtype=out_dtype, device=delta.device)
            if j > 0:  # keys before the tile, through the reference point e = t0 - 1
                e = cum[..., t0 - 1:t0]
                q = Cc[:, None, :, t0:t1] * _exp_((cum[..., t0:t1] - e).to(out_dtype))
                k = Bc[:, None, :, :t0] * _exp_((e - cum[..., :t0]).to(out_dtype))
                M[..., :t0] = q.transpose(-1, -2) @ k  # (batch, dc, tq, N) @ (batch, dc, N, t0)
            decay = _decay(cum[..., t0:t1], 0, t1 - t0, out_dtype)  # (batch, dc, N, tq, tq)
            CB = Cc[:, :, t0:t1, None] * Bc[:, :, None, t0:t1]  # (batch, N, tq, tq)
            M[..., t0:t1] = (decay * CB[:, None]).sum(2)
            M *= dl[:, :, None, :t1].to(out_dtype)  # input side: B_s delta_s
            if reduce == "none":
                out[:, c0:c0 + len(ch), t0:t1, :t1] = M
            elif reduce == "mean_abs":
                out[:, 0, t0:t1, :t1] += M.abs().sum(1) / d_inner
            else:
                out[:, 0, t0:t1, :t1] += M.sum(1) / d_inner
    return out


def ssd_map(dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            heads: Sequence[int] | None = None, tile_size: int | None = None,
            work_bytes: int = DEFAULT_WORK_BYTES) -> torch.Tensor:
    """Mamba-2 maps ``M_h`` (see the module docstring) from the scan inputs.

    Args:
        dt: (batch, L, H), after bias, softplus and limits. A: (H,).
        B, C: (batch, L, G, N); head h uses group h // (H / G).
        heads: head indices to return (None: all H).

    Returns:
        (batch, len(heads), L, L) float32 (float64 for float64 inputs), zero above the diagonal.
    """
    batch, L, H = dt.shape
    G = B.shape[2]
    out_dtype = torch.float64 if dt.dtype == torch.float64 else torch.float32
    idx = torch.arange(H, device=dt.device) if heads is None else torch.as_tensor(
        list(heads), dtype=torch.long, device=dt.device)
    if idx.numel() == 0 or idx.min() < 0 or idx.max() >= H:
        raise ValueError(f"heads must be a non-empty list of indices in [0, {H}), got {heads}")
    groups = idx // (H // G)
    out = torch.zeros(batch, idx.numel(), L, L, dtype=out_dtype, device=dt.device)
    if L == 0:
        return out
    dth = rearrange(dt[:, :, idx], "b l h -> b h l").double()
    cum = torch.cumsum(dth * A[idx].double()[None, :, None], dim=-1)  # (batch, h, L)
    Bc, Cc = B.to(out_dtype), C.to(out_dtype)
    per_row = batch * idx.numel() * L * (8 + 2 * out_dtype.itemsize) + batch * G * L * 4
    tq = _query_tile(per_row, L, tile_size, work_bytes)
    for t0 in range(0, L, tq):
        t1 = min(L, t0 + tq)
        CB = torch.einsum("btgn,bsgn->bgts", Cc[:, t0:t1], Bc[:, :t1])[:, groups]
        out[:, :, t0:t1, :t1] = CB * _decay(cum, t0, t1, out_dtype) * dth[:, :, None, :t1].to(out_dtype)
    return out


def softmax_attention_map(q: torch.Tensor, k: torch.Tensor, scale: float,
                          heads: Sequence[int] | None = None, tile_size: int | None = None,
                          work_bytes: int = DEFAULT_WORK_BYTES) -> torch.Tensor:
    """Causal softmax attention probabilities.

    Args:
        q: (batch, L, Hq, d); k: (batch, L, Hkv, d) with Hkv dividing Hq (grouped KV heads).
        scale: multiplies q . k before the softmax.
        heads: query-head indices to return (None: all).

    Returns:
        (batch, len(heads), L, L) float32, each row a distribution over s <= t.
    """
    batch, L, Hq, _ = q.shape
    idx = torch.arange(Hq) if heads is None else torch.as_tensor(list(heads), dtype=torch.long)
    if idx.numel() == 0 or idx.min() < 0 or idx.max() >= Hq:
        raise ValueError(f"heads must be a non-empty list of indices in [0, {Hq}), got {heads}")
    k = k.repeat_interleave(Hq // k.shape[2], dim=2)
    qh = rearrange(q[:, :, idx].float(), "b l h d -> b h l d")
    kh = rearrange(k[:, :, idx].float(), "b l h d -> b h l d")
    out = torch.zeros(batch, idx.numel(), L, L, dtype=torch.float32, device=q.device)
    tq = _query_tile(batch * idx.numel() * L * 8, L, tile_size, work_bytes)
    for t0 in range(0, L, tq):
        t1 = min(L, t0 + tq)
        scores = torch.einsum("bhtd,bhsd->bhts", qh[:, :, t0:t1], kh[:, :, :t1]) * scale
        t = torch.arange(t0, t1, device=q.device)[:, None]
        s = torch.arange(t1, device=q.device)[None, :]
        out[:, :, t0:t1, :t1] = scores.masked_fill(s > t, -math.inf).softmax(-1)
    return out


# ---- one layer, from its input ------------------------------------------------------------


def layer_kind(mixer: nn.Module) -> str:
    """MAMBA1, MAMBA2 or ATTENTION (:mod:`mimetic.layer_kinds`); TypeError for any other mixer."""
    if isinstance(mixer, Mamba):
        return MAMBA1
    if isinstance(mixer, Mamba2):
        return MAMBA2
    if isinstance(mixer, MHA):
        return ATTENTION
    raise TypeError(f"no attention map for a {type(mixer).__name__} mixer "
                    "(supported: Mamba, Mamba2, MHA)")


def map_heads(mixer: nn.Module, reduce: str = "mean_abs",
              channels: Sequence[int] | None = None) -> int:
    """How many "heads" :func:`mixer_attention_map` returns for this layer."""
    kind = layer_kind(mixer)
    if channels is not None:
        return len(list(channels))
    if kind == MAMBA1:
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        return mixer.d_inner if reduce == "none" else 1
    return mixer.nheads if kind == MAMBA2 else mixer.num_heads


def map_bytes(batch: int, heads: int, L: int) -> int:
    """Bytes of a float32 (batch, heads, L, L) map."""
    return batch * heads * L * L * 4


def _check_bytes(needed: int, max_bytes: int, what: str) -> None:
    if needed > max_bytes:
        raise MapMemoryError(
            f"{what} would take {needed / 2**20:.1f} MiB, over the limit max_bytes="
            f"{max_bytes} ({max_bytes / 2**20:.1f} MiB); use a shorter input, fewer layers, "
            "fewer channels/heads (or reduce='mean_abs'), or raise max_bytes")


@torch.no_grad()
def mixer_attention_map(mixer: nn.Module, hidden_states: torch.Tensor, reduce: str = "mean_abs",
                        channels: Sequence[int] | None = None,
                        max_bytes: int = DEFAULT_MAX_BYTES, tile_size: int | None = None,
                        work_bytes: int = DEFAULT_WORK_BYTES) -> torch.Tensor:
    """The attention map of one layer given its mixer input.

    Args:
        mixer: Mamba, Mamba2 or MHA (``model.backbone.layers[i].mixer``).
        hidden_states: the mixer input (batch, L, d_model).
        reduce: Mamba-1 channel reduction, see :func:`selective_scan_map` (ignored by
            Mamba-2 and attention layers, which have heads).
        channels: Mamba-1 channel indices, or Mamba-2 / attention head indices, to return
            as heads (None: all heads, or the reduced Mamba-1 map).
        max_bytes: limit on the returned map's size (counted as float32 entries);
            :class:`MapMemoryError` above it.
        tile_size: query rows per tile (None: Mamba-1 uses 32; Mamba-2 and attention as
            many rows as fit in ``work_bytes``). Results do not depend on it.
        work_bytes: scratch memory to aim for per tile (default 64 MiB).

    Returns:
        (batch, heads, L, L): M (Mamba-1/2, signed, without D and gate; float32, float64
        for a float64 layer) or softmax probabilities (attention, float32); row t holds the
        weights of positions s <= t.
    """
    kind = layer_kind(mixer)
    batch, L = hidden_states.shape[:2]
    _check_bytes(map_bytes(batch, map_heads(mixer, reduce, channels), L), max_bytes,
                 f"the map of layer {mixer.layer_idx}")
    tiling = dict(tile_size=tile_size, work_bytes=work_bytes)
    if kind == ATTENTION:
        q, k = mixer.qk(hidden_states)
        scale = mixer.softmax_scale or mixer.head_dim ** -0.5
        return softmax_attention_map(q, k, scale, heads=channels, **tiling)
    s = scan_inputs(mixer, hidden_states)
    if kind == MAMBA1:
        return selective_scan_map(s["delta"], s["A"], s["B"], s["C"], reduce=reduce,
                                  channels=channels, **tiling)
    return ssd_map(s["dt"], s["A"], s["B"], s["C"], heads=channels, **tiling)


# ---- a whole model ------------------------------------------------------------------------


@torch.no_grad()
def attention_maps(model: nn.Module, input_ids: torch.Tensor,
                   layers: int | Iterable[int] | None = None, reduce: str = "mean_abs",
                   channels: Sequence[int] | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                   tile_size: int | None = None,
                   work_bytes: int = DEFAULT_WORK_BYTES) -> dict[int, torch.Tensor]:
    """The attention maps of a :class:`~mimetic.models.MambaLM`'s layers on ``input_ids``.

    Runs the model once (up to the last requested layer) with forward pre-hooks that record
    each chosen mixer's input, then rebuilds each map from the layer's own weights with
    :func:`mixer_attention_map`.

    Args:
        model: a MambaLM (Mamba-1, Mamba-2 and attention layers may be mixed).
        input_ids: (batch, L) or (L,) token ids.
        layers: layer indices (negative counts from the end), one index, or None for all.
        reduce, channels, tile_size, work_bytes: as in :func:`mixer_attention_map`
            (``channels`` applies to every chosen layer).
        max_bytes: limit on all returned maps together (counted as float32 entries);
            checked before the model runs, :class:`MapMemoryError` names it.

    Returns:
        {layer index: (batch, heads, L, L) on the model's device, float32 (float64 for a
        float64 Mamba layer)}. Mamba-1: the channel reduction (1 head) or the chosen
        channels; Mamba-2: per head; attention: softmax probabilities per head.
    """
    if reduce not in REDUCTIONS:  # checked here too: only Mamba-1 layers read it
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    idx = resolve_layers(model, layers)
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a tensor, got {type(input_ids).__name__}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    batch, L = input_ids.shape if input_ids.dim() == 2 else (0, 0)
    mixers = {i: model.backbone.layers[i].mixer for i in idx}
    total = sum(map_bytes(batch, map_heads(m, reduce, channels), L) for m in mixers.values())
    _check_bytes(total, max_bytes, f"the maps of layers {idx} for input {tuple(input_ids.shape)}")

    captured = mixer_inputs(model, input_ids, idx)
    return {i: mixer_attention_map(mixers[i], captured[i], reduce=reduce, channels=channels,
                                   max_bytes=max_bytes, tile_size=tile_size,
                                   work_bytes=work_bytes)
            for i in idx}
