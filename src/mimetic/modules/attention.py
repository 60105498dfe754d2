"""Causal multi-head attention: the Transformer baseline mixer (``mamba_ssm``'s MHA names)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._args import check_factory, check_hidden, check_mha_args


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, base: float) -> torch.Tensor:
    """Rotary position embedding on the first ``rotary_dim`` features of each head
    (non-interleaved halves). x (batch, L, heads, head_dim); positions (L,)."""
    if rotary_dim == 0:
        return x
    half = rotary_dim // 2
    inv_freq = 1.0 / base ** (torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[:, None] * inv_freq  # (L, half)
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    x_rot, x_pass = x[..., :rotary_dim].float(), x[..., rotary_dim:]
    x1, x2 = x_rot[..., :half], x_rot[..., half:]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
    return torch.cat([rotated, x_pass], dim=-1)


class MHA(nn.Module):
    """Causal self-attention with optional grouped KV heads and rotary embeddings.

    in_proj: d_model -> (num_heads + 2 * num_heads_kv) * head_dim; out_proj back.
    Input and output: (batch, length, embed_dim).
    """

    def __init__(self, embed_dim: int, num_heads: int, num_heads_kv: int | None = None,
                 head_dim: int | None = None, qkv_proj_bias: bool = True,
                 out_proj_bias: bool = True, softmax_scale: float | None = None,
                 causal: bool = True, rotary_emb_dim: int = 0, rotary_emb_base: float = 10000.0,
                 layer_idx: int | None = None, device=None, dtype=None):
        super().__init__()
        check_mha_args(embed_dim, num_heads, num_heads_kv, head_dim, qkv_proj_bias, out_proj_bias,
                       softmax_scale, causal, rotary_emb_dim, rotary_emb_base)
        check_factory("MHA", layer_idx, device, dtype)
        if not causal:
            raise ValueError("only causal attention is supported (this is a language model mixer)")
        self.num_heads = num_heads
        self.num_heads_kv = num_heads_kv or num_heads
        if num_heads % self.num_heads_kv != 0:
            raise ValueError(f"num_heads_kv={self.num_heads_kv} must divide num_heads={num_heads}")
        self.head_dim = head_dim or embed_dim // num_heads
        if rotary_emb_dim % 2 or rotary_emb_dim > self.head_dim:
            raise ValueError(f"rotary_emb_dim={rotary_emb_dim} must be even and <= head_dim")
        self.softmax_scale, self.rotary_emb_dim, self.rotary_emb_base = softmax_scale, rotary_emb_dim, rotary_emb_base
        self.layer_idx = layer_idx
        factory = dict(device=device, dtype=dtype)
        qkv_dim = (num_heads + 2 * self.num_heads_kv) * self.head_dim
        self.in_proj = nn.Linear(embed_dim, qkv_dim, bias=qkv_proj_bias, **factory)
        self.out_proj = nn.Linear(num_heads * self.head_dim, embed_dim, bias=out_proj_bias, **factory)

    def _qkv(self, x: torch.Tensor, offset: int):
        q, k, v = self.in_proj(x).split(
            [self.num_heads * self.head_dim, self.num_heads_kv * self.head_dim,
             self.num_heads_kv * self.head_dim], dim=-1)
        q = rearrange(q, "b l (h d) -> b l h d", d=self.head_dim)
        k = rearrange(k, "b l (h d) -> b l h d", d=self.head_dim)
        v = rearrange(v, "b l (h d) -> b l h d", d=self.head_dim)
        pos = torch.arange(offset, offset + x.shape[1], device=x.device)
        q = apply_rotary(q, pos, self.rotary_emb_dim, self.rotary_emb_base)
        k = apply_rotary(k, pos, self.rotary_emb_dim, self.rotary_emb_base)
        return q, k, v

    def qk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys of x (b, L, embed_dim) from position 0, rotary embedding
        applied: q (b, L, num_heads, head_dim), k (b, L, num_heads_kv, head_dim). The
        layer's attention weights are softmax(q_t . k_s * scale) over s <= t, with scale
        ``softmax_scale`` or head_dim ** -0.5 and each key shared by num_heads /
        num_heads_kv query heads."""
        q, k, _ = self._qkv(x, 0)
        return q, k

    def _attend(self, q, k, v, causal: bool):
        rep = self.num_heads // self.num_heads_kv
        if rep > 1:  # repeat_interleave copies even for 1: in decoding, the whole KV cache each step
            k = k.repeat_interleave(rep, dim=2)
            v = v.repeat_interleave(rep, dim=2)
        poisoned = None
        if causal:
            # The kernels mask future keys after q.k (and weight future values by 0), so a
            # NaN/inf key or value at step j would turn 0 * NaN into NaN at steps i < j. They
            # see such entries as 0; steps at or after j are set to NaN below, as a causal
            # computation gives.
            bad = ~(torch.isfinite(k).all(-1) & torch.isfinite(v).all(-1))  # (b, l, h)
            poisoned = (bad.cumsum(1, dtype=torch.int32) > 0).transpose(1, 2).unsqueeze(-1)  # (b, h, l, 1)
            k = torch.nan_to_num(k, nan=0.0, posinf=0.0, neginf=0.0)
            v = torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=causal, scale=self.softmax_scale)
        if poisoned is not None:
            out = out.masked_fill(poisoned, math.nan)
        return self.out_proj(rearrange(out, "b h l d -> b l (h d)"))

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        """x (batch, L, embed_dim). With ``cache`` (a
        :class:`~mimetic.models.cache.KVState`) keys/values are appended to it."""
        check_hidden("MHA", x, self.in_proj.in_features, self.in_proj.weight)
        offset = 0 if cache is None else cache.seqlen_offset
        q, k, v = self._qkv(x, offset)
        if cache is None:
            return self._attend(q, k, v, causal=True)
        L = x.shape[1]
        if offset + L > cache.key.shape[1]:
            raise ValueError(f"KV cache holds {cache.key.shape[1]} positions; "
                             f"cannot write up to position {offset + L}")
        cache.key[:, offset:offset + L] = k.to(cache.key.dtype)
        cache.value[:, offset:offset + L] = v.to(cache.value.dtype)
        k_all = cache.key[:, :offset + L].to(q.dtype)
        v_all = cache.value[:, :offset + L].to(q.dtype)
        # Prefill (offset 0) is plain causal; a single new query sees every cached key.
        return self._attend(q, k_all, v_all, causal=offset == 0)

    def allocate_state(self, batch_size: int, max_seqlen: int, device=None, dtype=None):
        """KV cache: keys and values (batch, max_seqlen, num_heads_kv, head_dim)."""
        device = device or self.out_proj.weight.device
        dtype = dtype or self.out_proj.weight.dtype
        shape = (batch_size, max_seqlen, self.num_heads_kv, self.head_dim)
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
