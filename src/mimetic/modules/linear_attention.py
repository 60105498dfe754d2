"""Causal linear attention, the mimetic paper's baseline: an SSM with no decay.

Per head h, with feature map phi, queries q, keys k (key dim ``d_state``) and values v
(``headdim``)::

    y_t = sum_{s <= t} (phi(q_t) . phi(k_s)) v_s          state S_t = S_{t-1} + v_t phi(k_t)^T

This is Mamba-2's SSD scan with A = 0 and dt = 1 (decay exp(dt A) = 1) and no conv, gate or
input-dependent step: the state keeps everything, which is what mimetic init makes a Mamba
layer start from. So it runs on our ``ssd_scan`` (Triton on CUDA, chunked PyTorch on the CPU,
the same tested op as Mamba-2) and decodes with ``ssd_state_update``. Why not a library such
as flash-linear-attention: it has no CPU path (Triton GPU kernels only) and would add a
dependency for one scan we already have.

Without the softmax denominator the output grows with t; an RMSNorm over the heads' outputs
before ``out_proj`` (``norm=True``, as Mamba-2 normalizes its scan output) keeps its scale.
``feature_map``: "identity" (plain linear attention, the SSD form), "elu1" (elu + 1,
Katharopoulos et al. 2020: non-negative scores) or "relu".

Same d_model budget as Mamba-2: ``d_inner = expand * d_model`` value channels in heads of
``headdim``; queries and keys of ``d_state`` per group of heads (``ngroups``; None: one
group per head, the usual multi-head form), so the state per head is headdim x d_state as in
a Mamba-2 head. Parameters: ``in_proj`` (d_model -> 2 * ngroups * d_state + d_inner),
``norm.weight`` (d_inner,), ``out_proj`` (d_inner -> d_model).

Input and output: (batch, length, d_model).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .._validate import bool_arg, choice_arg, int_arg, real_arg
from ..ops import ssd_scan, ssd_state_update
from ._args import check_factory
from .norm import RMSNorm
from .recurrent import recurrent_forward

FEATURE_MAPS = ("identity", "elu1", "relu")


def feature_map(x: torch.Tensor, kind: str) -> torch.Tensor:
    """phi(x) elementwise: identity, elu(x) + 1 or relu(x)."""
    if kind == "identity":
        return x
    if kind == "elu1":
        return F.elu(x) + 1
    return F.relu(x)


def linear_attention_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int,
                          return_final_states: bool = False):
    """y_t = sum_{s <= t} (q_t . k_s) v_s per head, as the SSD scan with no decay (A = 0, dt = 1).

    q, k: (b, L, g, n) (feature map applied); v: (b, L, h, p), h a multiple of g.
    Returns y (b, L, h, p), and with ``return_final_states`` also the state (b, h, p, n).
    """
    batch, L, heads = v.shape[:3]
    ones = torch.ones(batch, L, heads, device=v.device, dtype=torch.float32)
    zeros = torch.zeros(heads, device=v.device, dtype=torch.float32)
    return ssd_scan(v, ones, zeros, k, q, chunk_size=chunk_size, return_final_states=return_final_states)


class LinearAttention(nn.Module):
    """Causal multi-head linear attention (see the module docstring)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int | None = None,
        feature_map: str = "identity",
        norm: bool = True,
        bias: bool = False,
        chunk_size: int = 256,
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        where = "LinearAttention"
        int_arg(where, "d_model", d_model, minimum=1)
        int_arg(where, "d_state", d_state, minimum=1)
        real_arg(where, "expand", expand, low=0, low_open=True)
        int_arg(where, "headdim", headdim, minimum=1)
        int_arg(where, "ngroups", ngroups, minimum=1, optional=True)
        choice_arg(where, "feature_map", feature_map, FEATURE_MAPS)
        bool_arg(where, "norm", norm)
        bool_arg(where, "bias", bias)
        int_arg(where, "chunk_size", chunk_size, minimum=1)
        check_factory(where, layer_idx, device, dtype)
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.expand = d_model, d_state, expand
        self.d_inner = int(expand * d_model)
        if self.d_inner < 1 or self.d_inner % headdim != 0:
            raise ValueError(f"{where}: d_inner = expand * d_model = {self.d_inner} must be a positive "
                             f"multiple of headdim={headdim}")
        self.headdim, self.nheads = headdim, self.d_inner // headdim
        self.ngroups = self.nheads if ngroups is None else ngroups
        if self.nheads % self.ngroups != 0:
            raise ValueError(f"{where}: ngroups={ngroups} must divide nheads={self.nheads}")
        self.feature_map, self.chunk_size, self.layer_idx = feature_map, chunk_size, layer_idx
        gn = self.ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * gn + self.d_inner, bias=bias, **factory)
        self.norm = RMSNorm(self.d_inner, eps=1e-5, **factory) if norm else None
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def qkv(self, u: torch.Tensor):
        """The scan inputs of ``u`` (..., d_model): phi(q), phi(k) (..., ngroups, d_state) and
        v (..., nheads, headdim)."""
        gn = self.ngroups * self.d_state
        q, k, v = self.in_proj(u).split([gn, gn, self.d_inner], dim=-1)
        q, k = (feature_map(rearrange(t, "... (g n) -> ... g n", g=self.ngroups), self.feature_map)
                for t in (q, k))
        return q, k, rearrange(v, "... (h p) -> ... h p", p=self.headdim)

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        y = rearrange(y, "... h p -> ... (h p)")
        return self.out_proj(self.norm(y) if self.norm is not None else y)

    def forward(self, u: torch.Tensor, cache=None) -> torch.Tensor:
        """u (batch, L, d_model) -> (batch, L, d_model). ``cache`` (an ``SSMState``) is
        filled on a prefill and advanced one token at a time once warm."""
        return recurrent_forward(self, "LinearAttention", u, cache)

    def _forward(self, u: torch.Tensor, cache=None) -> torch.Tensor:
        q, k, v = self.qkv(u)
        y = linear_attention_scan(q, k, v, self.chunk_size, return_final_states=cache is not None)
        if cache is not None:
            y, last = y
            cache.ssm_state = last.to(cache.ssm_state.dtype)
        return self._project(y)

    def step(self, u: torch.Tensor, cache) -> torch.Tensor:
        """One decoding step: u (batch, 1, d_model) -> (batch, 1, d_model)."""
        q, k, v = self.qkv(u.squeeze(1))
        batch = u.shape[0]
        ones = torch.ones(batch, self.nheads, device=u.device, dtype=torch.float32)
        zeros = torch.zeros(self.nheads, device=u.device, dtype=torch.float32)
        y = ssd_state_update(cache.ssm_state, v, ones, zeros, k, q)
        return self._project(y).unsqueeze(1)

    def allocate_state(self, batch_size: int, device=None, dtype=None,
                       state_dtype: torch.dtype = torch.float32):
        """An empty conv state (batch, 0, 0) (there is no conv) and the zero state
        (batch, nheads, headdim, d_state) in ``state_dtype``."""
        device = device or self.out_proj.weight.device
        conv = torch.zeros(batch_size, 0, 0, device=device, dtype=dtype or self.out_proj.weight.dtype)
        state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                            dtype=state_dtype)
        return conv, state
