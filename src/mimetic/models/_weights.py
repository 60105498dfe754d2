"""Weight files into a model, for every checkpoint format: ``checkpoint.py`` (ours and
``mamba_ssm``'s) and ``hf_convert.py`` (``transformers``') both read through here, so
neither imports the other for it. ``first_nonfinite`` is the NaN/inf check of weights on
save and load (training checkpoints use it too)."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

#: safetensors metadata key of our files' tensor checksum (``save_pretrained`` writes it).
CHECKSUM_KEY = "mimetic_sha256"


def tensors_sha256(state: dict) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``state``'s tensors in name order
    (a flipped bit in a weight file that still parses changes it)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating tensor of ``named`` holding NaN/inf, or None. Reads the
    host once per device (not once per tensor), so a check of a model on the GPU at a
    checkpoint costs one synchronisation."""
    floats = [(n, t.detach()) for n, t in named if isinstance(t, torch.Tensor) and t.is_floating_point()]
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(floats):
        by_device.setdefault(t.device, []).append(i)
    bad: list[int] = []
    for idx in by_device.values():
        ok = torch.stack([torch.isfinite(floats[i][1]).all() for i in idx]).cpu()
        bad += [i for i, good in zip(idx, ok.tolist()) if not good]
    return floats[min(bad)][0] if bad else None


def read_weights(file: Path) -> dict:
    """Every tensor of ``file`` (CPU): a ``.safetensors`` file, else a pickled state dict read
    with ``weights_only=True``. A truncated or foreign file is a one-line error naming it, and
    every floating tensor is checked finite (NaN weights would load silently and generate
    garbage)."""
    try:
        if file.suffix == ".safetensors":
            state = load_file(str(file))
            with safe_open(str(file), "pt") as f:
                stored = (f.metadata() or {}).get(CHECKSUM_KEY)
        else:
            stored = None
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / pickle errors have their own types
        raise ValueError(f"{file}: unreadable ({' '.join(str(e).split())})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{file}: not a state dict")
    if stored is not None and stored != tensors_sha256(state):
        raise ValueError(f"{file}: the tensors do not match the checksum saved with them (a corrupted file)")
    bad = first_nonfinite(state.items())
    if bad is not None:
        raise ValueError(f"{file}: tensor {bad} holds non-finite values (NaN/inf)")
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
        if not isinstance(v, torch.Tensor) or v.is_floating_point() != own[k].is_floating_point():
            raise ValueError(f"{source}: {k} holds {getattr(v, 'dtype', type(v).__name__)}, the model expects "
                             f"{'a floating' if own[k].is_floating_point() else 'an integer'} tensor")
        if v.shape != own[k].shape:
            raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, the config expects "
                             f"{tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)
    if tied:
        model.lm_head.weight = model.backbone.embedding.weight
