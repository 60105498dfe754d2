"""Constructor and input checks of the mixer layers: impossible sizes and ranges fail where
they enter with one line naming the argument, its value and what is allowed (instead of a
deep einops/matmul error later, or NaN outputs: ``A_init_range=(-2, -1)`` takes the log of a
negative number). ``MambaConfig`` runs the same checks on ``ssm_cfg``/``attn_cfg``, so a
sweep file with a bad mixer argument fails when it is loaded.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .._validate import bool_arg, int_arg, range_arg, real_arg

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _common(where: str, d_model: Any, d_state: Any, d_conv: Any, expand: Any, bools: dict[str, Any]) -> None:
    int_arg(where, "d_model", d_model, minimum=1)
    int_arg(where, "d_state", d_state, minimum=1)
    int_arg(where, "d_conv", d_conv, minimum=1)
    real_arg(where, "expand", expand, low=0, low_open=True)
    if int(expand * d_model) < 1:
        raise ValueError(f"{where}: expand={expand!r} gives d_inner = int(expand * d_model) = 0")
    for name, value in bools.items():
        bool_arg(where, name, value)


def _dt_init(where: str, dt_min: Any, dt_max: Any, dt_init_floor: Any) -> None:
    real_arg(where, "dt_min", dt_min, low=0, low_open=True)
    real_arg(where, "dt_max", dt_max, low=dt_min, high=None)
    real_arg(where, "dt_init_floor", dt_init_floor, low=0)


def check_mamba_args(d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1,
                     dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False,
                     use_fast_path=True, **_: Any) -> None:
    """The arguments of ``Mamba(...)`` (Mamba-1)."""
    where = "Mamba"
    _common(where, d_model, d_state, d_conv, expand, dict(conv_bias=conv_bias, bias=bias, use_fast_path=use_fast_path))
    if dt_rank != "auto":
        int_arg(where, "dt_rank", dt_rank, minimum=1)
    if dt_init not in ("random", "constant"):
        raise ValueError(f"{where}: dt_init={dt_init!r} must be 'random' or 'constant'")
    real_arg(where, "dt_scale", dt_scale, low=0, low_open=True)
    _dt_init(where, dt_min, dt_max, dt_init_floor)


def check_mamba2_args(d_model, d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64, ngroups=1,
                      A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True, norm_before_gate=False,
                      dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, math.inf), bias=False,
                      conv_bias=True, chunk_size=256, use_mem_eff_path=True, **_: Any) -> None:
    """The arguments of ``Mamba2(...)`` one by one; divisibility (headdim | d_inner, ngroups |
    nheads) is the layer's check (a config may be used with a custom model factory)."""
    where = "Mamba2"
    _common(where, d_model, d_state, d_conv, expand,
            dict(D_has_hdim=D_has_hdim, rmsnorm=rmsnorm, norm_before_gate=norm_before_gate, bias=bias,
                 conv_bias=conv_bias, use_mem_eff_path=use_mem_eff_path))
    int_arg(where, "headdim", headdim, minimum=1)
    int_arg(where, "ngroups", ngroups, minimum=1)
    int_arg(where, "chunk_size", chunk_size, minimum=1)
    real_arg(where, "conv_init", conv_init, low=0, low_open=True, optional=True)
    # A = -exp(A_log) with A_log = log(uniform(A_init_range)): the range must be positive
    range_arg(where, "A_init_range", A_init_range, low=0, allow_inf_high=False, strict_low=True)
    range_arg(where, "dt_limit", dt_limit, low=0, allow_inf_high=True, strict_low=False)
    _dt_init(where, dt_min, dt_max, dt_init_floor)


def mamba2_heads(d_model: int, expand: float, headdim: int, ngroups: int) -> tuple[int, int]:
    """(d_inner, nheads) of a Mamba-2 layer, after the divisibility checks that its single
    arguments cannot show: headdim | d_inner and ngroups | nheads."""
    d_inner = int(expand * d_model)
    if d_inner % headdim != 0:
        raise ValueError(f"Mamba2: d_inner = expand * d_model = {d_inner} must be a multiple of headdim={headdim}")
    nheads = d_inner // headdim
    if nheads % ngroups != 0:
        raise ValueError(f"Mamba2: ngroups={ngroups} must divide nheads={nheads}")
    return d_inner, nheads


def check_mha_args(embed_dim, num_heads, num_heads_kv=None, head_dim=None, qkv_proj_bias=True,
                   out_proj_bias=True, softmax_scale=None, causal=True, rotary_emb_dim=0,
                   rotary_emb_base=10000.0, **_: Any) -> None:
    """The arguments of ``MHA(...)`` (attention)."""
    where = "MHA"
    int_arg(where, "embed_dim", embed_dim, minimum=1)
    int_arg(where, "num_heads", num_heads, minimum=1)
    int_arg(where, "num_heads_kv", num_heads_kv, minimum=1, optional=True)
    int_arg(where, "head_dim", head_dim, minimum=1, optional=True)
    int_arg(where, "rotary_emb_dim", rotary_emb_dim, minimum=0)
    real_arg(where, "softmax_scale", softmax_scale, low=0, low_open=True, optional=True)
    real_arg(where, "rotary_emb_base", rotary_emb_base, low=0, low_open=True)
    for name, value in dict(qkv_proj_bias=qkv_proj_bias, out_proj_bias=out_proj_bias, causal=causal).items():
        bool_arg(where, name, value)
    if head_dim is None and embed_dim // num_heads < 1:
        raise ValueError(f"{where}: num_heads={num_heads} > embed_dim={embed_dim} leaves head_dim 0")


def check_dtype(where: str, name: str, dtype: Any, optional: bool = True) -> None:
    """``dtype`` is a floating torch.dtype (or None if ``optional``): a layer or model built
    with ``dtype="float32"`` or ``torch.int64`` fails here, not in ``torch.empty`` or
    ``requires_grad`` deep inside ``nn.Linear``."""
    if dtype is None and optional:
        return
    if dtype not in _FLOATS:
        raise ValueError(f"{where}: {name}={dtype!r} must be a floating torch.dtype "
                         f"({', '.join(str(d) for d in _FLOATS)}){' or None' if optional else ''}")


def check_device(where: str, device: Any) -> None:
    """``device`` is None or names a device torch knows ("cpu", "cuda:1", a torch.device)."""
    if device is None:
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{where}: device={device!r} is not a device name (e.g. 'cpu', 'cuda', 'cuda:1')") from None


def check_factory(where: str, layer_idx: Any, device: Any, dtype: Any) -> None:
    """The arguments every layer constructor takes besides its own: ``layer_idx`` (an int or
    None), ``device`` and ``dtype``."""
    int_arg(where, "layer_idx", layer_idx, minimum=0, optional=True)
    check_device(where, device)
    check_dtype(where, "dtype", dtype)


def check_hidden(where: str, x: Any, d_model: int, weight: torch.Tensor | None = None) -> None:
    """A layer's input: a floating tensor (batch, length, d_model); with ``weight`` (the
    layer's input projection) also on its device and, outside autocast, of its dtype (else a
    matmul deep inside the layer fails with a message that names neither)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: input must be a tensor (batch, length, {d_model}), got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{where}: input must have shape (batch, length, {d_model}), got {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{where}: input must be a floating tensor, got {x.dtype}")
    if weight is None:
        return
    if x.device != weight.device:
        raise ValueError(f"{where}: input is on device {x.device}, the layer's weights on {weight.device}")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{where}: input dtype {x.dtype} differs from the layer's {weight.dtype} "
                        "(cast one of them, or run under torch.autocast)")
