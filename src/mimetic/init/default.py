"""``mamba_ssm``'s initialization, reproduced exactly (layer-level and model-level)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .._validate import int_arg, real_arg


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """y such that softplus(y) = x, for x > 0 (stable form of log(exp(x) - 1))."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"inverse_softplus takes a tensor, got {type(x).__name__}")
    if not torch.compiler.is_compiling() and x.numel() and not bool((x > 0).all()):
        raise ValueError(f"inverse_softplus needs x > 0 (softplus is positive), got min {float(x.min())}")
    return x + torch.log(-torch.expm1(-x))


def _sample_dt(n: int, dt_min: float, dt_max: float, floor: float, device) -> torch.Tensor:
    """n time steps log-uniform in [dt_min, dt_max], floored."""
    u = torch.rand(n, device=device)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return dt.clamp(min=floor)


def _check_layer(layer: nn.Module, where: str, kind: str, marker: str) -> None:
    """``layer`` is one of our ``kind`` layers (they keep ``dt_init_cfg``; ``marker`` tells
    Mamba-1, with ``x_proj``, from Mamba-2, with ``dt_bias``)."""
    if not (isinstance(layer, nn.Module) and hasattr(layer, "dt_init_cfg") and hasattr(layer, marker)):
        raise TypeError(f"{where} takes a mimetic {kind} layer, got {type(layer).__name__}")


@torch.no_grad()
def default_init_mamba_(layer: nn.Module) -> None:
    """Reset a Mamba-1 layer as ``mamba_ssm.Mamba.__init__`` does: PyTorch defaults for the
    projections and conv; dt_proj weight uniform(+-dt_rank^-0.5 * dt_scale) (or constant);
    dt_proj bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max]; A_log = log(1..N)
    (S4D-real); D = 1."""
    _check_layer(layer, "default_init_mamba_", "Mamba", "x_proj")
    cfg = layer.dt_init_cfg
    for m in (layer.in_proj, layer.conv1d, layer.x_proj, layer.out_proj):
        m.reset_parameters()
    std = layer.dt_rank ** -0.5 * cfg["dt_scale"]
    if cfg["dt_init"] == "constant":
        nn.init.constant_(layer.dt_proj.weight, std)
    else:
        nn.init.uniform_(layer.dt_proj.weight, -std, std)
    dt = _sample_dt(layer.d_inner, cfg["dt_min"], cfg["dt_max"], cfg["dt_init_floor"],
                    layer.dt_proj.bias.device)
    layer.dt_proj.bias.copy_(inverse_softplus(dt))
    layer.dt_proj.bias._no_reinit = True  # the model-level init must not zero it
    A = torch.arange(1, layer.d_state + 1, dtype=torch.float32, device=layer.A_log.device)
    layer.A_log.copy_(torch.log(A).expand(layer.d_inner, -1))
    layer.D.fill_(1.0)


@torch.no_grad()
def default_init_mamba2_(layer: nn.Module) -> None:
    """Reset a Mamba-2 layer as ``mamba_ssm.Mamba2.__init__`` does: PyTorch defaults for the
    projections (conv uniform(+-conv_init) if given); dt_bias = softplus^-1(dt), dt
    log-uniform in [dt_min, dt_max]; A = uniform(A_init_range), A_log = log(A); D = 1;
    norm weight 1."""
    _check_layer(layer, "default_init_mamba2_", "Mamba2", "dt_bias")
    cfg = layer.dt_init_cfg
    for m in (layer.in_proj, layer.conv1d, layer.out_proj):
        m.reset_parameters()
    if layer.conv_init is not None:
        nn.init.uniform_(layer.conv1d.weight, -layer.conv_init, layer.conv_init)
    dt = _sample_dt(layer.nheads, cfg["dt_min"], cfg["dt_max"], cfg["dt_init_floor"],
                    layer.dt_bias.device)
    layer.dt_bias.copy_(inverse_softplus(dt))
    lo, hi = cfg["A_init_range"]
    A = torch.empty(layer.nheads, device=layer.A_log.device).uniform_(lo, hi)
    layer.A_log.copy_(torch.log(A))
    layer.D.fill_(1.0)
    if getattr(layer, "norm", None) is not None:
        layer.norm.weight.fill_(1.0)


@torch.no_grad()
def init_lm_weights_(model: nn.Module, n_layer: int, initializer_range: float = 0.02,
                     n_residuals_per_layer: int = 1) -> None:
    """Model-level init of ``mamba_ssm``'s ``MambaLMHeadModel``: zero every Linear bias
    (except those marked ``_no_reinit``), embeddings N(0, 0.02), and the output projections
    that write into the residual stream (``out_proj``, ``fc2``) re-drawn kaiming-uniform and
    scaled by 1/sqrt(n_residuals_per_layer * n_layer) (GPT-2's residual rescaling)."""
    int_arg("init_lm_weights_", "n_layer", n_layer, minimum=1)
    int_arg("init_lm_weights_", "n_residuals_per_layer", n_residuals_per_layer, minimum=1)
    real_arg("init_lm_weights_", "initializer_range", initializer_range, low=0)
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is not None:
            if not getattr(module.bias, "_no_reinit", False):
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=initializer_range)
        for child_name in ("out_proj", "fc2"):
            child = getattr(module, child_name, None)
            if isinstance(child, nn.Linear):
                nn.init.kaiming_uniform_(child.weight, a=math.sqrt(5))
                child.weight /= math.sqrt(n_residuals_per_layer * n_layer)
