"""Mimetic initialization (Trockman et al. 2024): make each SSM layer start out as linear
attention, so that it can learn to copy and recall.

A Mamba layer computes y_t = sum_s C_t . (prod_{k=s+1..t} exp(delta_k A)) . B_s delta_s x_s,
i.e. attention with query C_t, key B_s, value x_s and a causal decay mask. The components,
each a knob of :class:`MimeticConfig` so that ablations can switch it off:

1. ``decay`` -- no forgetting: A close to 0 and delta close to ``dt`` (default 1, through the
   delta bias softplus^-1(dt)), so exp(delta A) ~ 1 and the mask is the all-ones causal mask
   of linear attention. A_log is ``a_log`` (default -8, a public adaptation's constant), or,
   with ``horizon`` = the training length L, the largest value whose decay over L tokens
   stays >= ``keep``: exp(-L dt exp(A_log)) >= keep, i.e. A_log = log(-log(keep) / (L dt)).
2. ``tie_bc`` -- queries match keys: the rows of the projection that produce C follow those
   that produce B, so C_t . B_s = x_t^T W_C^T W_B x_s is largest when x_t ~ x_s. The paper
   says the two should not be strictly equal; two forms of "nearly equal" are knobs:
   ``bc_noise`` adds independent noise (std ``bc_noise`` times the rows' std) to W_C, and
   ``bc_alpha`` sets W_C = (I + bc_alpha Z) W_B with Z an (N, N) Gaussian of std 1/sqrt(N),
   so that W_C^T W_B = W_B^T W_B + bc_alpha W_B^T Z^T W_B: identity on the rows' span plus a
   random part, the low-rank analogue of mimetic self-attention's W_q W_k^T = alpha Z + beta I.
3. ``tie_conv`` (Mamba-2) -- in Mamba-2, B and C are slices of ``in_proj`` that pass through
   their own depthwise conv taps, bias and SiLU before C_t . B_s is formed, so tying the
   ``in_proj`` rows alone leaves C and B nearly uncorrelated. ``tie_conv`` copies the B
   channels' conv taps and bias to the C channels, so that the tie survives the conv. (In
   Mamba-1 B and C are read from the conv output by ``x_proj``: nothing to tie there.)
4. ``conv_identity`` (off by default; the paper lists it as an option) -- the short causal
   conv set to pass the current step through (weight 1 at the last tap, 0 elsewhere, bias
   0) so it does not blur keys and queries.

Where the paper's digest gives no exact constant the knob says so, and
``experiments/ablation*.toml`` measure the choices over seeds (see experiments/README.md).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .._validate import numpy_note
from ..layer_kinds import MAMBA1, MAMBA2
from .default import inverse_softplus

DEFAULT_A_LOG = -8.0


@dataclass(frozen=True)
class MimeticConfig:
    """Knobs of :func:`mimetic_init_` (see the module docstring). The defaults of the
    components the paper leaves open (``tie_conv``, ``bc_noise``, ``bc_alpha``, ``horizon``,
    ``conv_identity``) are the ones a 10-seed ablation chose (experiments/README.md)."""

    decay: bool = True
    a_log: float = DEFAULT_A_LOG
    horizon: int | None = None
    keep: float = 0.9
    dt: float = 1.0
    tie_bc: bool = True
    bc_noise: float = 0.0
    bc_alpha: float = 0.0
    bc_scale: float = 1.0
    tie_conv: bool = False
    conv_identity: bool = False

    def __post_init__(self):
        for name in ("decay", "tie_bc", "tie_conv", "conv_identity"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"mimetic init: {name} must be true or false, got {getattr(self, name)!r}")
        for name in ("a_log", "keep", "dt", "bc_noise", "bc_alpha", "bc_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"mimetic init: {name} must be a finite number, got {value!r}{numpy_note(value)}")
        if self.dt <= 0:
            raise ValueError(f"mimetic init: dt must be positive, got {self.dt}")
        if self.bc_noise < 0 or self.bc_scale <= 0:
            raise ValueError(f"mimetic init: bc_noise must be >= 0 and bc_scale > 0, got "
                             f"{self.bc_noise} and {self.bc_scale}")
        if self.horizon is not None:
            if isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 1:
                raise ValueError(f"mimetic init: horizon must be a positive int (the training "
                                 f"length in tokens) or None, got {self.horizon!r}{numpy_note(self.horizon)}")
            if self.a_log != DEFAULT_A_LOG:
                raise ValueError("mimetic init: give a_log or horizon, not both (horizon sets A_log)")
        if not 0 < self.keep < 1:
            raise ValueError(f"mimetic init: keep must lie in (0, 1), got {self.keep}")

    @property
    def A_log(self) -> float:
        """The A_log the ``decay`` component sets: ``a_log``, or the one ``horizon`` implies."""
        if self.horizon is None:
            return float(self.a_log)
        return math.log(-math.log(self.keep) / (self.horizon * self.dt))


def _layer_kind(m: nn.Module) -> str | None:
    """MAMBA1 / MAMBA2 (:mod:`mimetic.layer_kinds`) for a Mamba layer, None otherwise. By
    parameter names, not by class, so that mamba_ssm's and transformers' layers are found too."""
    A_log = getattr(m, "A_log", None)
    if not isinstance(A_log, torch.Tensor):
        return None
    if A_log.dim() == 2 and hasattr(m, "x_proj") and hasattr(m, "dt_proj"):
        return MAMBA1
    if A_log.dim() == 1 and hasattr(m, "dt_bias") and hasattr(m, "in_proj"):
        return MAMBA2
    return None


def _tie_rows_(weight: torch.Tensor, b_rows: slice, c_rows: slice, cfg: MimeticConfig) -> None:
    """weight[b_rows] *= bc_scale; weight[c_rows] = (I + bc_alpha Z) weight[b_rows] + noise.

    weight: (out, in); the B and C row slices hold N rows each. Z is (N, N) with entries of
    std 1/sqrt(N); the noise is independent per entry, std ``bc_noise`` times the B rows'.
    """
    w_b = weight[b_rows] * cfg.bc_scale
    w_c = w_b
    if cfg.bc_alpha != 0:
        n = w_b.shape[0]
        z = torch.randn(n, n, dtype=torch.float32, device=w_b.device) / math.sqrt(n)
        w_c = w_b + cfg.bc_alpha * (z @ w_b.float()).to(w_b.dtype)
    if cfg.bc_noise > 0:
        w_c = w_c + torch.randn_like(w_b) * w_b.std() * cfg.bc_noise
    weight[b_rows] = w_b
    weight[c_rows] = w_c


def _copy_channels_(conv: nn.Conv1d, src: slice, dst: slice) -> None:
    """The conv taps and bias of channels ``dst`` set to those of channels ``src``."""
    conv.weight[dst] = conv.weight[src]
    if conv.bias is not None:
        conv.bias[dst] = conv.bias[src]


def _conv_identity_(conv: nn.Conv1d, channels: slice) -> None:
    conv.weight[channels] = 0.0
    conv.weight[channels, :, -1] = 1.0
    if conv.bias is not None:
        conv.bias[channels] = 0.0


@torch.no_grad()
def _mimetic_mamba1_(m: nn.Module, cfg: MimeticConfig) -> None:
    d_inner, N = m.A_log.shape
    dt_rank = m.x_proj.weight.shape[0] - 2 * N
    if cfg.decay:
        m.A_log.fill_(cfg.A_log)
        m.dt_proj.bias.fill_(float(inverse_softplus(torch.tensor(cfg.dt))))
    if cfg.tie_bc:
        _tie_rows_(m.x_proj.weight, slice(dt_rank, dt_rank + N), slice(dt_rank + N, dt_rank + 2 * N), cfg)
    if cfg.conv_identity:
        _conv_identity_(m.conv1d, slice(0, d_inner))


@torch.no_grad()
def _mimetic_mamba2_(m: nn.Module, cfg: MimeticConfig) -> None:
    d_inner = m.out_proj.weight.shape[1]
    G = getattr(m, "ngroups", getattr(m, "n_groups", None))
    N = getattr(m, "d_state", getattr(m, "ssm_state_size", None))
    if G is None or N is None:
        raise ValueError(f"cannot find ngroups / d_state on {type(m).__name__}; mimetic_init_ "
                         "needs them to locate the B and C rows of in_proj")
    if cfg.decay:
        m.A_log.fill_(cfg.A_log)
        m.dt_bias.fill_(float(inverse_softplus(torch.tensor(cfg.dt))))
    # in_proj rows: [z (d_inner), x (d_inner), B (G*N), C (G*N), dt (H)] -- possibly after
    # extra MLP rows in mamba_ssm's d_ssm < d_inner variant, so index from the end.
    rows = m.in_proj.weight.shape[0]
    H = m.A_log.shape[0]
    c_end = rows - H
    c_start = c_end - G * N
    b_start = c_start - G * N
    if cfg.tie_bc:
        _tie_rows_(m.in_proj.weight, slice(b_start, c_start), slice(c_start, c_end), cfg)
    # conv channels: [x (d_inner), B (G*N), C (G*N)]
    b_conv, c_conv = slice(d_inner, d_inner + G * N), slice(d_inner + G * N, d_inner + 2 * G * N)
    if cfg.tie_conv:
        _copy_channels_(m.conv1d, b_conv, c_conv)
    if cfg.conv_identity:
        _conv_identity_(m.conv1d, slice(0, d_inner + 2 * G * N))


def mimetic_init_(module: nn.Module, config: MimeticConfig | None = None, **knobs) -> nn.Module:
    """Apply mimetic initialization in place to every Mamba-1 / Mamba-2 layer in ``module``
    (the module itself or any submodule; ours, ``mamba_ssm``'s or ``transformers``'s, found
    by parameter names: ``A_log``, ``x_proj``/``dt_proj`` or ``dt_bias``/``in_proj``).

    Args:
        module: a layer or a whole model.
        config: a :class:`MimeticConfig`; or pass its fields as keyword ``knobs``
            (``decay``, ``a_log``, ``horizon``, ``keep``, ``dt``, ``tie_bc``, ``bc_noise``,
            ``bc_alpha``, ``bc_scale``, ``tie_conv``, ``conv_identity``).

    Returns the module. Raises ``ValueError`` if it holds no Mamba layer (so a typo never
    silently leaves a model at its default initialization).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"mimetic_init_ takes a torch.nn.Module (a layer or a model), got {type(module).__name__}")
    if config is not None and not isinstance(config, MimeticConfig):
        raise TypeError(f"mimetic_init_: config must be a MimeticConfig (or pass its knobs as keywords), "
                        f"got {type(config).__name__}")
    if config is not None and knobs:
        raise ValueError("pass either config or keyword knobs, not both")
    cfg = config or MimeticConfig(**knobs)
    found = 0
    for m in module.modules():
        kind = _layer_kind(m)
        if kind == MAMBA1:
            _mimetic_mamba1_(m, cfg)
        elif kind == MAMBA2:
            _mimetic_mamba2_(m, cfg)
        found += kind is not None
    if found == 0:
        raise ValueError(f"{type(module).__name__} contains no Mamba layer to initialize")
    return module


MIMETIC_KNOBS = tuple(asdict(MimeticConfig()).keys())
