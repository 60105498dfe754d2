"""Mamba-1 layer (selective SSM), with ``mamba_ssm``'s constructor and parameter names."""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from ..init import default_init_mamba_
from ..ops import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update
from ._args import check_factory, check_hidden, check_mamba_args
from ._projections import in_proj, out_proj, weight_bmm
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
        check_mamba_args(d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_scale,
                         dt_init_floor, conv_bias, bias, use_fast_path)
        check_factory("Mamba", layer_idx, device, dtype)
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
        default_init_mamba_(self)

    def forward(self, hidden_states: torch.Tensor, cache=None) -> torch.Tensor:
        """hidden_states (batch, L, d_model) -> (batch, L, d_model). With ``cache`` (a
        :class:`~mimetic.models.cache.SSMState`), fills it with the final conv and SSM
        states (prefill) or, for L == 1 and a warm cache, takes one recurrent step."""
        check_hidden("Mamba", hidden_states, self.d_model, self.in_proj.weight)
        if cache is not None and cache.seqlen_offset > 0:
            if hidden_states.shape[1] != 1:
                raise ValueError("a warm cache can only be advanced one token at a time")
            return self.step(hidden_states, cache)
        if hidden_states.numel() == 0:  # no batch rows or no steps: nothing to scan
            return self.out_proj(self.in_proj(hidden_states)[..., :self.d_inner])
        if cache is None:
            return batch_parallel(self, self._forward, hidden_states)
        return self._forward(hidden_states, cache)

    def scan_inputs(self, hidden_states: torch.Tensor) -> dict[str, torch.Tensor]:
        """What this layer feeds its selective scan for hidden_states (b, L, d_model): the
        keyword arguments of :func:`mimetic.ops.selective_scan`, ``u`` (the conv output),
        ``delta`` (before bias and softplus), ``A``, ``B``, ``C``, ``D``, ``z``,
        ``delta_bias`` and ``delta_softplus``. The layer's output is
        ``out_proj(selective_scan(**inputs).transpose(1, 2))``."""
        return self._scan_inputs(hidden_states, None)

    def _scan_inputs(self, hidden_states: torch.Tensor, cache) -> dict[str, torch.Tensor]:
        # Every (batch, features, L) tensor here has L contiguous, the layout of the conv
        # and the scan, and each projection is one GEMM that reads and writes its operands
        # in the layout they come in, forward and backward: no layout copies (see the
        # projections in _projections.py; torch.matmul(W, h^T) would copy twice, forward and backward).
        x, z = in_proj(hidden_states, self.in_proj.weight, self.in_proj.bias,
                       (self.d_inner, self.d_inner))  # (batch, d_inner, L), feature-major
        x = causal_conv1d(x, rearrange(self.conv1d.weight, "d 1 w -> d w"), self.conv1d.bias,
                          activation="silu", return_final_states=cache is not None)
        if cache is not None:
            x, cache.conv_state = x
        dt, B, C = weight_bmm(self.x_proj.weight, x).split(
            [self.dt_rank, self.d_state, self.d_state], dim=1)   # (batch, rank | n | n, L)
        dt = weight_bmm(self.dt_proj.weight, dt)  # (batch, d_inner, L); bias goes in the scan
        # D and the dt bias go in as they are (the kernels read any float dtype in fp32).
        return dict(u=x, delta=dt, A=self.A, B=B, C=C, D=self.D, z=z,
                    delta_bias=self.dt_proj.bias, delta_softplus=True)

    def _forward(self, hidden_states: torch.Tensor, cache=None) -> torch.Tensor:
        y = selective_scan(**self._scan_inputs(hidden_states, cache),
                           return_last_state=cache is not None)
        if cache is not None:
            y, last = y
            cache.ssm_state = last.to(cache.ssm_state.dtype)
        return out_proj(y, self.out_proj.weight, self.out_proj.bias)

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
