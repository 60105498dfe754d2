"""K language models of one shape as one program: parameters stacked on a model axis.

``EnsembleLM(members)`` takes K :class:`~mimetic.models.MambaLM` of the same shape (same
config up to the initialization) and holds each parameter as one (K, *shape) tensor. Its
forward runs all K models at once with the model axis folded into the feature axes the ops
already have, so each op is one launch for the whole ensemble:

* activations are (batch, L, K * d): member k owns features k*d .. (k+1)*d - 1;
* projections are batched GEMMs over the model axis (weights (K, out, in));
* norms are grouped RMSNorms with one group per member (``group_size = d``);
* the Mamba-1 scan gets K * d_inner channels and its B/C as K groups, the Mamba-2 scan
  K * nheads heads and K * ngroups groups, the convs K * channels, attention K * heads.

No op mixes members, so each member computes what it would alone (up to floating-point
summation order) and a member that turns non-finite leaves the others untouched. Members'
weights go in and out with :meth:`EnsembleLM.load_member` / :meth:`EnsembleLM.write_member`.
Configurations the folding does not cover raise a ValueError naming what is unsupported.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..models import MambaConfig, MambaLM
from ..modules import MHA, LinearAttention, Mamba, Mamba2, RMSNorm
from ..modules.attention import apply_rotary
from ..modules.linear_attention import feature_map, linear_attention_scan
from ..ops import causal_conv1d, rms_norm, selective_scan, ssd_scan


def shape_signature(config: MambaConfig) -> dict:
    """What must agree for models to share an ensemble: the config without its init."""
    return replace(config, init="default", init_cfg={}).to_dict()


def ensemble_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot be an ensemble member (None: it can)."""
    if not isinstance(model, MambaLM):
        return f"it is a {type(model).__name__}, not a MambaLM"
    if not model.config.rms_norm:
        return "it uses LayerNorm (rms_norm=False); only RMSNorm models fold"
    for layer in model.backbone.layers:
        if layer.mlp is not None:
            return "it has MLP blocks (d_intermediate > 0)"
        if not isinstance(layer.mixer, (Mamba, Mamba2, LinearAttention, MHA)):
            return f"it has a {type(layer.mixer).__name__} mixer"
    return None


def stacked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Each member's ``nn.Linear``: x (batch, L, K, in), weight (K, out, in), bias (K, out)
    -> (batch, L, K, out). One batched GEMM over the model axis; under autocast, like
    ``nn.Linear``, the product and the output are in the autocast dtype."""
    out = torch.einsum("blki,koi->blko", x, weight)
    return out if bias is None else out + bias.to(out.dtype)


class EnsembleLM(nn.Module):
    """K same-shape ``MambaLM`` trained as one model (see the module docstring).

    ``forward(input_ids (batch, L, K) long) -> logits (batch, L, K, vocab_size)``: member k
    reads ``input_ids[..., k]`` and writes ``logits[..., k, :]``. With ``positions (batch, P, K)``
    long, the logits are only those at ``positions[..., k]`` of member k: (batch, P, K,
    vocab_size), the LM head (often most of a step when the vocabulary is large) computed
    only where the loss reads it.
    ``params[name]`` is the (K, *shape) stack of the members' parameter ``name`` (names as
    in ``MambaLM.named_parameters()``; tied weights appear once).
    """

    def __init__(self, members: Sequence[MambaLM]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        for i, m in enumerate(members):
            if not isinstance(m, MambaLM):
                raise TypeError(f"ensemble member {i} is a {type(m).__name__}, not a MambaLM")
            if shape_signature(m.config) != shape_signature(first.config):
                raise ValueError(f"ensemble member {i} differs in shape from member 0 "
                                 "(members may differ only in their initialization and weights)")
        problem = ensemble_problem(first)
        if problem is not None:
            raise ValueError(f"EnsembleLM cannot hold this model: {problem}")
        cfg = first.config
        self.config, self.K = cfg, len(members)
        # The layer modules of member 0 are the shape template (sizes, flags); they are
        # kept outside the module tree so their parameters are not the ensemble's.
        self._template = [first]
        self.names = [n for n, _ in first.named_parameters()]
        self.params = nn.ParameterDict()
        for name in self.names:
            stacked = torch.stack([m.get_parameter(name).detach() for m in members])
            self.params[self._key(name)] = nn.Parameter(stacked.clone())

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def p(self, name: str) -> torch.Tensor:
        """The (K, *shape) stack of parameter ``name``."""
        return self.params[self._key(name)]

    def named_stacked(self):
        """(name, stacked parameter) in ``MambaLM.named_parameters()`` order."""
        return [(n, self.p(n)) for n in self.names]

    # ---- members in and out ---------------------------------------------------------------

    @torch.no_grad()
    def load_member(self, k: int, model: MambaLM) -> None:
        """Copy ``model``'s weights into member slot ``k``."""
        for name in self.names:
            self.p(name)[k].copy_(model.get_parameter(name))

    @torch.no_grad()
    def write_member(self, k: int, model: MambaLM) -> MambaLM:
        """Copy member ``k``'s weights into ``model`` (same shape) and return it."""
        for name in self.names:
            model.get_parameter(name).copy_(self.p(name)[k])
        return model

    # ---- forward --------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        if input_ids.dim() != 3 or input_ids.shape[-1] != self.K:
            raise ValueError(f"input_ids must have shape (batch, L, K={self.K}), got {tuple(input_ids.shape)}")
        if positions is not None and (positions.dim() != 3 or positions.shape[0] != input_ids.shape[0]
                                      or positions.shape[-1] != self.K):
            raise ValueError(f"positions must have shape (batch, P, K={self.K}), got {tuple(positions.shape)}")
        cfg, K = self.config, self.K
        table = self.p("backbone.embedding.weight")              # (K, V_pad, d)
        vpad = table.shape[1]
        offsets = torch.arange(K, device=input_ids.device) * vpad
        hidden = F.embedding(input_ids + offsets, table.reshape(K * vpad, -1))  # (b, L, K, d)
        hidden = hidden.flatten(2)                                # (b, L, K*d)
        residual = None
        for i, layer in enumerate(self._template[0].backbone.layers):
            pre = f"backbone.layers.{i}."
            hidden, residual = rms_norm(
                hidden, self.p(pre + "norm.weight").reshape(-1), eps=layer.norm.eps,
                residual=residual, prenorm=True, residual_in_fp32=cfg.residual_in_fp32,
                group_size=cfg.d_model)
            mixer = layer.mixer
            if isinstance(mixer, Mamba):
                hidden = self._mamba1(pre + "mixer.", mixer, hidden)
            elif isinstance(mixer, Mamba2):
                hidden = self._mamba2(pre + "mixer.", mixer, hidden)
            elif isinstance(mixer, LinearAttention):
                hidden = self._linear_attention(pre + "mixer.", mixer, hidden)
            else:
                hidden = self._attention(pre + "mixer.", mixer, hidden)
        norm_f: RMSNorm = self._template[0].backbone.norm_f
        hidden = rms_norm(hidden, self.p("backbone.norm_f.weight").reshape(-1), eps=norm_f.eps,
                          residual=residual, group_size=cfg.d_model)
        hidden = hidden.unflatten(2, (K, -1))                    # (b, L, K, d)
        if positions is not None:  # the head only where it is read: (b, P, K, d)
            hidden = hidden.gather(1, positions[..., None].expand(-1, -1, -1, hidden.shape[-1]))
        head = table if cfg.tie_embeddings else self.p("lm_head.weight")
        logits = torch.einsum("blkd,kvd->blkv", hidden, head)
        return logits[..., : cfg.vocab_size]

    def _linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Member-wise ``name`` (an nn.Linear of the template): x (b, L, K*in) or
        (b, L, K, in) -> (b, L, K, out)."""
        if x.dim() == 3:
            x = x.unflatten(2, (self.K, -1))
        bias = self.params.get(self._key(name + ".bias"))
        return stacked_linear(x, self.p(name + ".weight"), bias)

    def _conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Member-wise depthwise causal conv + SiLU: x (b, K*c, L) -> (b, K*c, L)."""
        weight = rearrange(self.p(name + ".weight"), "k c 1 w -> (k c) w")
        bias = self.params.get(self._key(name + ".bias"))
        return causal_conv1d(x, weight, None if bias is None else bias.reshape(-1), activation="silu")

    def _mamba1(self, pre: str, m: Mamba, hidden: torch.Tensor) -> torch.Tensor:
        K, di, n = self.K, m.d_inner, m.d_state
        x, z = self._linear(pre + "in_proj", hidden).split([di, di], dim=-1)   # (b, L, K, di)
        channels = "b l k c -> b (k c) l"
        x = self._conv(pre + "conv1d", rearrange(x, channels))                # (b, K*di, L)
        x_tokens = rearrange(x, "b (k c) l -> b l k c", k=K)
        dt, B, C = self._linear(pre + "x_proj", x_tokens).split([m.dt_rank, n, n], dim=-1)
        dt = stacked_linear(dt, self.p(pre + "dt_proj.weight"), None)           # bias: in the scan
        A = -torch.exp(self.p(pre + "A_log").float()).reshape(K * di, n)
        y = selective_scan(
            x, rearrange(dt, channels), A,
            rearrange(B, "b l k n -> b k n l"), rearrange(C, "b l k n -> b k n l"),
            self.p(pre + "D").reshape(-1), z=rearrange(z, channels),
            delta_bias=self.p(pre + "dt_proj.bias").reshape(-1), delta_softplus=True)
        out = self._linear(pre + "out_proj", rearrange(y, "b (k c) l -> b l k c", k=K))
        return out.flatten(2)

    def _mamba2(self, pre: str, m: Mamba2, hidden: torch.Tensor) -> torch.Tensor:
        K, di, h, p = self.K, m.d_inner, m.nheads, m.headdim
        gn = m.ngroups * m.d_state
        z, xBC, dt = self._linear(pre + "in_proj", hidden).split([di, m.conv_dim, h], dim=-1)
        xBC = self._conv(pre + "conv1d", rearrange(xBC, "b l k c -> b (k c) l"))
        xBC = rearrange(xBC, "b (k c) l -> b l k c", k=K)
        x, B, C = xBC.split([di, gn, gn], dim=-1)
        D = self.p(pre + "D").float()
        D = D.reshape(K * h, p) if m.D_has_hdim else D.reshape(-1)
        y = ssd_scan(
            rearrange(x, "b l k (h p) -> b l (k h) p", p=p), dt.flatten(2),
            -torch.exp(self.p(pre + "A_log").float()).reshape(-1),
            rearrange(B, "b l k (g n) -> b l (k g) n", g=m.ngroups),
            rearrange(C, "b l k (g n) -> b l (k g) n", g=m.ngroups),
            chunk_size=m.chunk_size, D=D,
            z=None if m.rmsnorm else rearrange(z, "b l k (h p) -> b l (k h) p", p=p),
            dt_bias=self.p(pre + "dt_bias").float().reshape(-1), dt_softplus=True,
            dt_limit=m.dt_limit)
        y = rearrange(y, "b l (k h) p -> b l (k h p)", k=K)
        if m.rmsnorm:
            y = rms_norm(y, self.p(pre + "norm.weight").reshape(-1), z=z.flatten(2), eps=m.norm.eps,
                         group_size=m.norm.group_size, norm_before_gate=m.norm.norm_before_gate)
        return self._linear(pre + "out_proj", y).flatten(2)

    def _linear_attention(self, pre: str, m: LinearAttention, hidden: torch.Tensor) -> torch.Tensor:
        K, di, gn = self.K, m.d_inner, m.ngroups * m.d_state
        q, k, v = self._linear(pre + "in_proj", hidden).split([gn, gn, di], dim=-1)   # (b, L, K, *)
        q, k = (feature_map(rearrange(t, "b l k (g n) -> b l (k g) n", g=m.ngroups), m.feature_map)
                for t in (q, k))
        v = rearrange(v, "b l k (h p) -> b l (k h) p", p=m.headdim)
        y = rearrange(linear_attention_scan(q, k, v, m.chunk_size), "b l (k h) p -> b l (k h p)", k=K)
        if m.norm is not None:
            y = rms_norm(y, self.p(pre + "norm.weight").reshape(-1), eps=m.norm.eps, group_size=di)
        return self._linear(pre + "out_proj", y).flatten(2)

    def _attention(self, pre: str, m: MHA, hidden: torch.Tensor) -> torch.Tensor:
        K, hd, H, Hkv = self.K, m.head_dim, m.num_heads, m.num_heads_kv
        q, k, v = self._linear(pre + "in_proj", hidden).split([H * hd, Hkv * hd, Hkv * hd], dim=-1)
        heads = "b l k (h d) -> b l (k h) d"
        q, k, v = (rearrange(t, heads, d=hd) for t in (q, k, v))
        pos = torch.arange(hidden.shape[1], device=hidden.device)
        q = apply_rotary(q, pos, m.rotary_emb_dim, m.rotary_emb_base)
        k = apply_rotary(k, pos, m.rotary_emb_dim, m.rotary_emb_base)
        rep = H // Hkv
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=True, scale=m.softmax_scale)
        out = rearrange(out, "b (k h) l d -> b l k (h d)", k=K)
        return self._linear(pre + "out_proj", out).flatten(2)
