"""Mamba-2 layer (SSD), with ``mamba_ssm``'s constructor and parameter names."""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..init import default_init_mamba2_
from ..ops import causal_conv1d, causal_conv1d_update, ssd_scan, ssd_state_update
from ._args import check_factory, check_mamba2_args, mamba2_heads
from ._packed import split_views
from .norm import RMSNormGated
from .recurrent import recurrent_forward


class Mamba2(nn.Module):
    """State space dual layer (Dao & Gu 2024).

    One in_proj gives [z, x, B, C, dt]; a causal depthwise conv + SiLU runs over (x, B, C);
    the SSD scan uses a scalar decay A_h = -exp(A_log_h) per head of ``headdim`` channels,
    with B and C shared within each of ``ngroups`` groups; a gated RMSNorm (gate SiLU(z))
    precedes out_proj.

    Input and output: (batch, length, d_model).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 128,
        d_conv: int = 4,
        conv_init: float | None = None,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1, 16),
        D_has_hdim: bool = False,
        rmsnorm: bool = True,
        norm_before_gate: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_limit: tuple[float, float] = (0.0, float("inf")),
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 256,
        use_mem_eff_path: bool = True,  # accepted for mamba_ssm compatibility
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_mamba2_args(d_model, d_state, d_conv, conv_init, expand, headdim, ngroups, A_init_range,
                          D_has_hdim, rmsnorm, norm_before_gate, dt_min, dt_max, dt_init_floor, dt_limit,
                          bias, conv_bias, chunk_size, use_mem_eff_path)
        check_factory("Mamba2", layer_idx, device, dtype)
        factory = dict(device=device, dtype=dtype)
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner, self.nheads = mamba2_heads(d_model, expand, headdim, ngroups)
        self.headdim, self.ngroups = headdim, ngroups
        self.D_has_hdim, self.rmsnorm = D_has_hdim, rmsnorm
        self.dt_limit, self.chunk_size, self.layer_idx = tuple(dt_limit), chunk_size, layer_idx
        self.conv_init = conv_init
        self.dt_init_cfg = dict(dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor,
                                A_init_range=tuple(A_init_range))

        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory)
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.dt_bias = nn.Parameter(torch.empty(self.nheads, device=device))
        self.A_log = nn.Parameter(torch.empty(self.nheads, device=device))
        self.D = nn.Parameter(torch.empty(self.d_inner if D_has_hdim else self.nheads, device=device))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        if rmsnorm:
            self.norm = RMSNormGated(self.d_inner, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_inner // ngroups, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)
        default_init_mamba2_(self)

    @property
    def A(self) -> torch.Tensor:
        """Per-head decay rate (nheads,), negative."""
        return -torch.exp(self.A_log.float())

    def _D(self) -> torch.Tensor:
        return self.D.float().view(self.nheads, self.headdim) if self.D_has_hdim else self.D.float()

    def _split_proj(self, zxbcdt: torch.Tensor):
        return zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _split_xbc(self, xBC: torch.Tensor):
        gn = self.ngroups * self.d_state
        return xBC.split([self.d_inner, gn, gn], dim=-1)

    def _gate_and_project(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.rmsnorm:
            y = self.norm(y, z)
        return self.out_proj(y)

    def forward(self, u: torch.Tensor, cache=None) -> torch.Tensor:
        """u (batch, L, d_model) -> (batch, L, d_model); ``cache`` as in :class:`Mamba`."""
        return recurrent_forward(self, "Mamba2", u, cache)

    def scan_inputs(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """What this layer feeds its SSD scan for u (b, L, d_model): the keyword arguments
        of :func:`mimetic.ops.ssd_scan` (``x``, ``dt`` before bias and softplus, ``A``,
        ``B``, ``C``, ``chunk_size``, ``D``, ``z``, ``dt_bias``, ``dt_softplus``,
        ``dt_limit``), and the gate z (b, L, d_inner). With ``rmsnorm`` the gate goes to the
        norm after the scan (the arguments' ``z`` is None), else into the scan. The layer's
        output is ``out_proj(norm(y, z))`` (with ``rmsnorm``) or ``out_proj(y)``, with y
        the scan's output as (b, L, d_inner)."""
        inputs, z, _ = self._scan_inputs(u, False)
        return inputs, z

    def _scan_inputs(self, u: torch.Tensor, conv_state: bool):
        z, xBC, dt = self._split_proj(self.in_proj(u))
        xBC = causal_conv1d(rearrange(xBC, "b l d -> b d l"),
                            rearrange(self.conv1d.weight, "d 1 w -> d w"), self.conv1d.bias,
                            activation="silu", return_final_states=conv_state)
        state = None
        if conv_state:
            xBC, state = xBC
        # split_views: the Triton scan writes dx | dB | dC as one tensor, taken as is
        gn = self.ngroups * self.d_state
        x, B, C = split_views(rearrange(xBC, "b d l -> b l d"), [self.d_inner, gn, gn])
        inputs = dict(
            x=rearrange(x, "b l (h p) -> b l h p", p=self.headdim), dt=dt, A=self.A,
            B=rearrange(B, "b l (g n) -> b l g n", g=self.ngroups),
            C=rearrange(C, "b l (g n) -> b l g n", g=self.ngroups),
            chunk_size=self.chunk_size, D=self._D(),
            z=None if self.rmsnorm else rearrange(z, "b l (h p) -> b l h p", p=self.headdim),
            dt_bias=self.dt_bias.float(), dt_softplus=True, dt_limit=self.dt_limit)
        return inputs, z, state

    def _forward(self, u: torch.Tensor, cache=None) -> torch.Tensor:
        inputs, z, conv_state = self._scan_inputs(u, cache is not None)
        if cache is not None:
            cache.conv_state = conv_state
        y = ssd_scan(**inputs, return_final_states=cache is not None)
        if cache is not None:
            y, last = y
            cache.ssm_state = last.to(cache.ssm_state.dtype)
        return self._gate_and_project(rearrange(y, "b l h p -> b l (h p)"), z)

    def step(self, u: torch.Tensor, cache) -> torch.Tensor:
        """One decoding step: u (batch, 1, d_model) -> (batch, 1, d_model)."""
        z, xBC, dt = self._split_proj(self.in_proj(u.squeeze(1)))
        xBC = causal_conv1d_update(xBC, cache.conv_state,
                                   rearrange(self.conv1d.weight, "d 1 w -> d w"),
                                   self.conv1d.bias, activation="silu")
        x, B, C = self._split_xbc(xBC)
        y = ssd_state_update(
            cache.ssm_state, rearrange(x, "b (h p) -> b h p", p=self.headdim), dt, self.A_log,
            rearrange(B, "b (g n) -> b g n", g=self.ngroups),
            rearrange(C, "b (g n) -> b g n", g=self.ngroups), D=self._D(),
            z=None if self.rmsnorm else rearrange(z, "b (h p) -> b h p", p=self.headdim),
            dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.dt_limit, A_is_log=True,
        )
        return self._gate_and_project(rearrange(y, "b h p -> b (h p)"), z).unsqueeze(1)

    def allocate_state(self, batch_size: int, device=None, dtype=None,
                       state_dtype: torch.dtype = torch.float32):
        """Zero conv state (batch, conv_dim, d_conv-1) in ``dtype`` (default: the conv
        weight's) and SSM state (batch, H, P, N) in ``state_dtype``."""
        device = device or self.out_proj.weight.device
        dtype = dtype or self.conv1d.weight.dtype
        conv = torch.zeros(batch_size, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                          dtype=state_dtype)
        return conv, ssm
