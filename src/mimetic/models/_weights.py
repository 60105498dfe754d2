"""Weight files into a model, for every checkpoint format: ``checkpoint.py`` (ours and
``mamba_ssm``'s) and ``hf_convert.py`` (``transformers``') both read through here, so
neither imports the other for it."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def read_weights(file: Path) -> dict:
    """Every tensor of ``file`` (CPU): a ``.safetensors`` file, else a pickled state dict read
    with ``weights_only=True``. A truncated or foreign file is a one-line error naming it, and
    every floating tensor is checked finite (NaN weights would load silently and generate
    garbage)."""
    try:
        if file.suffix == ".safetensors":
            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / pickle errors have their own types
        raise ValueError(f"{file}: unreadable ({' '.join(str(e).split())})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{file}: not a state dict")
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{file}: tensor {name} holds non-finite values (NaN/inf)")
    return state


def load_state_into(model, state: dict, source: str) -> None:
    """Copy ``state`` into ``model`` with clear errors for missing, unexpected and
    wrongly shaped tensors (``source`` names the file in messages)."""
    own = model.state_dict()
    tied = model.config.tie_embeddings
    missing = [k for k in own if k not in state and not (tied and k == "lm_head.weight")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the config: missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{'...' if len(unexpected) > 8 else ''}")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, the config expects "
                             f"{tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)
    if tied:
        model.lm_head.weight = model.backbone.embedding.weight
