"""Save and load checkpoints: ours (config.json + model.safetensors), ``mamba_ssm``'s
(config.json + pytorch_model.bin) and ``transformers``' (Mamba / Mamba2 ForCausalLM)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import save_file

from .._validate import device_problem
from ._weights import CHECKSUM_KEY, first_nonfinite, load_state_into, read_weights, tensors_sha256
from .config import MambaConfig
from .hf_convert import load_transformers_checkpoint

FORMAT_TAG = "mimetic"


def save_pretrained(model, path) -> None:
    """Write ``config.json`` (tagged ``"format": "mimetic"``) and ``model.safetensors``.
    Tied weights are stored once (the LM head is re-tied on load).

    Each file is written under a temporary name and renamed into place (a crash leaves the
    old file or the new one, never half of one); both get the mode the umask gives. Weights
    holding NaN/inf are refused (``from_pretrained`` would refuse the files), naming the
    tensor; nothing is written then."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a folder")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    bad = first_nonfinite(state.items())
    if bad is not None:
        raise ValueError(f"not saving {path}: tensor {bad} holds non-finite values (NaN/inf)")
    path.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT_TAG, **model.config.to_dict()}
    tmp_config, tmp_weights = path / f".config.json.tmp-{os.getpid()}", path / f".model.safetensors.tmp-{os.getpid()}"
    try:
        tmp_config.write_text(json.dumps(config, indent=2))
        save_file(state, str(tmp_weights), metadata={"format": "pt", CHECKSUM_KEY: tensors_sha256(state)})
        os.chmod(tmp_weights, tmp_config.stat().st_mode & 0o777)  # safetensors writes 0600
        os.replace(tmp_weights, path / "model.safetensors")
        os.replace(tmp_config, path / "config.json")
    finally:
        for tmp in (tmp_config, tmp_weights):
            tmp.unlink(missing_ok=True)


def _read_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no config.json in {path}")
    try:
        raw = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_file} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_file} must hold a JSON object (the config), got a {type(raw).__name__}")
    return raw


def load_pretrained(cls, path, device=None, dtype=None):
    """Detect the checkpoint format in directory ``path`` and build the model."""
    if device is not None:
        problem = device_problem(device)
        if problem is not None:
            raise ValueError(f"from_pretrained: {problem}")
    path = Path(path)
    raw = _read_config(path)
    if raw.get("format") == FORMAT_TAG:
        cfg = dict(raw)
        cfg.pop("format")
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"no model.safetensors in {path}")
        config = MambaConfig.from_dict(cfg)
        # Loaded weights replace the init, so build with the cheap default init.
        model = cls(_with_default_init(config), device=device, dtype=dtype)
        model.config = config
        load_state_into(model, read_weights(weights), str(weights))
        return model
    if raw.get("model_type") in ("mamba", "mamba2"):
        return load_transformers_checkpoint(cls, path, raw, device=device, dtype=dtype)
    if "format" in raw:  # ours with another tag: read as mamba_ssm's it would fail on "format"
        raise ValueError(f"{path / 'config.json'}: format={raw['format']!r} is not {FORMAT_TAG!r} "
                         "(the tag save_pretrained writes)")
    if "d_model" in raw and "n_layer" in raw:
        return _load_mamba_ssm(cls, path, raw, device=device, dtype=dtype)
    raise ValueError(f"{path / 'config.json'}: unrecognized checkpoint format (expected ours, "
                     "mamba_ssm's or transformers' Mamba/Mamba2)")


def _with_default_init(config: MambaConfig) -> MambaConfig:
    d = config.to_dict()
    d["init"], d["init_cfg"] = "default", {}
    return MambaConfig.from_dict(d)


def _load_mamba_ssm(cls, path: Path, raw: dict, device=None, dtype=None):
    """``mamba_ssm`` format: its MambaConfig fields in config.json, weights with the same
    names as ours in pytorch_model.bin (read with ``weights_only=True``)."""
    config = MambaConfig.from_dict(raw)
    weights = path / "pytorch_model.bin"
    if not weights.is_file():
        raise FileNotFoundError(f"no pytorch_model.bin in {path}")
    state = read_weights(weights)
    model = cls(config, device=device, dtype=dtype)
    load_state_into(model, state, str(weights))
    return model
