"""Mimetic initialization (Trockman et al. 2024): make each SSM layer start out as linear
attention, so that it can learn to copy and recall.

A Mamba layer computes y_t = sum_s C_t . (prod_{k=s+1..t} exp(delta_k A)) . B_s delta_s x_s,
i.e. attention with query C_t, key B_s, value x_s and a causal decay mask. Two changes
make it mimic attention at step 0:

1. ``decay`` — no forgetting: A close to 0 (``A_log = a_log``, default -8, so
   A = -exp(-8) ~ -3.4e-4) and delta close to ``dt`` (default 1) through the delta bias
   softplus^-1(dt), so exp(delta A) ~ 1 and delta B ~ B: the mask is the all-ones causal
   mask of plain linear attention.
2. ``tie_bc`` — queries match keys: the rows of the projection that produce C are set
   equal to those that produce B (W_C = W_B, so W_C W_B^T is positive semi-definite and
   close to a scaled identity on the span of the rows), plus optional independent noise of
   std ``bc_noise`` times the rows' std. Then C_t . B_s = x_t^T W^T W x_s is largest when
   x_t ~ x_s: the layer attends to similar tokens.
3. ``conv_identity`` (off by default; the paper lists it as an option) — the short causal
   conv set to pass the current step through (weight 1 at the last tap, 0 elsewhere, bias
   0) so it does not blur keys and queries.

Where the paper's digest gives no exact constant (``a_log``, ``bc_noise``), the knob's
default is the one a public adaptation uses, and every component can be switched off for
the ablations.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .default import inverse_softplus


@dataclass(frozen=True)
class MimeticConfig:
    """Knobs of :func:`mimetic_init_` (see the module docstring)."""

    decay: bool = True
    a_log: float = -8.0
    dt: float = 1.0
    tie_bc: bool = True
    bc_noise: float = 0.0
    bc_scale: float = 1.0
    conv_identity: bool = False

    def __post_init__(self):
        if self.dt <= 0:
            raise ValueError(f"dt must be positive, got {self.dt}")
        if self.bc_noise < 0 or self.bc_scale <= 0:
            raise ValueError("bc_noise must be >= 0 and bc_scale > 0")


def _layer_kind(m: nn.Module) -> str | None:
    """'mamba1' / 'mamba2' for modules with mamba_ssm or transformers parameter names."""
    A_log = getattr(m, "A_log", None)
    if not isinstance(A_log, torch.Tensor):
        return None
    if A_log.dim() == 2 and hasattr(m, "x_proj") and hasattr(m, "dt_proj"):
        return "mamba1"
    if A_log.dim() == 1 and hasattr(m, "dt_bias") and hasattr(m, "in_proj"):
        return "mamba2"
    return None


def _tie_rows_(weight: torch.Tensor, b_rows: slice, c_rows: slice, cfg: MimeticConfig) -> None:
    """Set weight[c_rows] = weight[b_rows] (+ noise), both scaled by ``bc_scale``."""
    shared = weight[b_rows] * cfg.bc_scale
    noise = torch.randn_like(shared) * shared.std() * cfg.bc_noise if cfg.bc_noise > 0 else 0.0
    weight[b_rows] = shared
    weight[c_rows] = shared + noise


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
        m.A_log.fill_(cfg.a_log)
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
        m.A_log.fill_(cfg.a_log)
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
    if cfg.conv_identity:
        # conv channels: [x (d_inner), B, C]
        _conv_identity_(m.conv1d, slice(0, d_inner + 2 * G * N))


def mimetic_init_(module: nn.Module, config: MimeticConfig | None = None, **knobs) -> nn.Module:
    """Apply mimetic initialization in place to every Mamba-1 / Mamba-2 layer in ``module``
    (the module itself or any submodule; ours, ``mamba_ssm``'s or ``transformers``'s, found
    by parameter names: ``A_log``, ``x_proj``/``dt_proj`` or ``dt_bias``/``in_proj``).

    Args:
        module: a layer or a whole model.
        config: a :class:`MimeticConfig`; or pass its fields as keyword ``knobs``
            (``decay``, ``a_log``, ``dt``, ``tie_bc``, ``bc_noise``, ``bc_scale``,
            ``conv_identity``).

    Returns the module. Raises ``ValueError`` if it holds no Mamba layer (so a typo never
    silently leaves a model at its default initialization).
    """
    if config is not None and knobs:
        raise ValueError("pass either config or keyword knobs, not both")
    cfg = config or MimeticConfig(**knobs)
    found = 0
    for m in module.modules():
        kind = _layer_kind(m)
        if kind == "mamba1":
            _mimetic_mamba1_(m, cfg)
        elif kind == "mamba2":
            _mimetic_mamba2_(m, cfg)
        found += kind is not None
    if found == 0:
        raise ValueError(f"{type(module).__name__} contains no Mamba layer to initialize")
    return module


MIMETIC_KNOBS = tuple(asdict(MimeticConfig()).keys())
