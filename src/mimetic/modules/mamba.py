"""Mamba-1 layer (selective SSM), with ``mamba_ssm``'s constructor and parameter names."""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from ..ops import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update
from .batch_parallel import batch_parallel


class Mamba(nn.Module):
    """Selective state space layer (Gu & Dao 2023).

    in_proj: d_model -> 2*d_inner (x, z); causal depthwise conv + SiLU on x; x_proj gives
    (dt, B, C) from x; delta = softplus(dt_proj(dt) + bias); selective scan with A =
    -exp(A_log) and skip D; gate with SiLU(z); out_proj back to d_model.

    Input and output: (batch, length, d_model).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,  # accepted for mamba_ssm compatibility; ops pick the path
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.layer_idx = layer_idx
        self.dt_init_cfg = dict(dt_min=dt_min, dt_max=dt_max, dt_init=dt_init, dt_scale=dt_scale,
                                dt_init_floor=dt_init_floor)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state, device=device))
        self.D = nn.Parameter(torch.empty(self.d_inner, device=device))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        from ..init import default_init_mamba_

        default_init_mamba_(self)

    def forward(self, hidden_states: torch.Tensor, cache=None) -> torch.Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_model). With ``cache`` (a
        :class:`~mimetic.models.cache.SSMState`), fills it with the final conv and SSM
        states (prefill) or, for L == 1 and a warm cache, takes one recurrent step."""
        if cache is not None and cache.seqlen_offset > 0:
            if hidden_states.shape[1] != 1:
                raise ValueError("a warm cache can only be advanced one token at a time")
            return self.step(hidden_states, cache)
        if cache is None:
            return batch_parallel(self, self._forward, hidden_states)
        return self._forward(hidden_states, cache)

    def _forward(self, hidden_states: torch.Tensor, cache=None) -> torch.Tensor:
        # The projections are computed as W @ h^T, giving (batch, features, L) tensors
        # with L contiguous, the layout of the conv and the scan: a (batch, L, features)
        # result would need a transposing copy of each (slow on GPU).
        xz = torch.matmul(self.in_proj.weight, hidden_states.transpose(1, 2))
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias[:, None]
        x, z = xz.chunk(2, dim=1)  # (batch, d_inner, L) each
        x = causal_conv1d(x, rearrange(self.conv1d.weight, "d 1 w -> d w"), self.conv1d.bias,
                          activation="silu", return_final_states=cache is not None)
        if cache is not None:
            x, cache.conv_state = x
        dt, B, C = torch.matmul(self.x_proj.weight, x).split(
            [self.dt_rank, self.d_state, self.d_state], dim=1)   # (batch, rank | n | n, L)
        dt = torch.matmul(self.dt_proj.weight, dt)  # (batch, d_inner, L); bias goes in the scan
        y = selective_scan(x, dt, self.A, B, C, self.D.float(), z=z,
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                           return_last_state=cache is not None)
        if cache is not None:
            y, last = y
            cache.ssm_state = last.to(cache.ssm_state.dtype)
        return self.out_proj(rearrange(y, "b d l -> b l d"))

    @property
    def A(self) -> torch.Tensor:
        """State matrix (d_inner, d_state), negative real."""
        return -torch.exp(self.A_log.float())

    def step(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        """One decoding step: hidden_states (batch, 1, d_model) -> (batch, 1, d_model)."""
        x, z = self.in_proj(hidden_states.squeeze(1)).chunk(2, dim=-1)  # (batch, d_inner)
        x = causal_conv1d_update(x, cache.conv_state, rearrange(self.conv1d.weight, "d 1 w -> d w"),
                                 self.conv1d.bias, activation="silu")
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        # The step applies dt_proj and forms A = -exp(A_log) itself: fewer launches a token.
        y = selective_state_update(cache.ssm_state, x, dt, self.A_log, B, C, self.D, z=z,
                                   dt_bias=self.dt_proj.bias, dt_softplus=True, A_is_log=True,
                                   dt_proj_weight=self.dt_proj.weight)
        return self.out_proj(y).unsqueeze(1)

    def allocate_state(self, batch_size: int, device=None, dtype=None,
                       state_dtype: torch.dtype = torch.float32):
        """Zero conv state (batch, d_inner, d_conv-1) in ``dtype`` (default: the conv
        weight's) and SSM state (batch, d_inner, d_state) in ``state_dtype``."""
        device = device or self.out_proj.weight.device
        dtype = dtype or self.conv1d.weight.dtype
        conv = torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=state_dtype)
        return conv, ssm
