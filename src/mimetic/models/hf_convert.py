"""Load local ``transformers`` checkpoints (``MambaForCausalLM`` / ``Mamba2ForCausalLM``).

A ``transformers`` checkpoint directory holds ``config.json`` (``model_type`` "mamba" or
"mamba2") and the weights: ``model.safetensors``, shards listed in
``model.safetensors.index.json``, or the older ``pytorch_model.bin`` (read with
``weights_only=True``; sharded via ``pytorch_model.bin.index.json``).

The architecture is the same as ours; only the names differ:

* config: ``hidden_size`` -> ``d_model``, ``num_hidden_layers`` -> ``n_layer``,
  ``state_size`` -> ``d_state``, ``conv_kernel`` -> ``d_conv``, ``time_step_rank`` ->
  ``dt_rank``, ``use_bias`` / ``use_conv_bias`` -> ``bias`` / ``conv_bias``,
  ``tie_word_embeddings`` -> ``tie_embeddings``; Mamba-2: ``head_dim`` -> ``headdim``,
  ``n_groups`` -> ``ngroups``, ``time_step_limit`` -> ``dt_limit``, ``chunk_size``.
* weights: ``backbone.embeddings.weight`` -> ``backbone.embedding.weight``; every other
  tensor (``backbone.layers.{i}.norm``, ``backbone.layers.{i}.mixer.*``,
  ``backbone.norm_f``, ``lm_head``) keeps its name.

Every config field is accounted for: mapped, checked against what we compute, or ignored
because it only affects initialization, generation or bookkeeping. Anything else is an
error naming the field, so a checkpoint we cannot reproduce exactly never loads silently.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..layer_kinds import MAMBA1, MAMBA2
from ._weights import load_state_into, read_weights
from .config import MambaConfig

# Our norms (block norms, final norm, Mamba-2's gated norm) use this epsilon.
NORM_EPS = 1e-5

# Fields every ``transformers`` config may carry that do not change the forward pass:
# serialization metadata, special token ids, generation defaults, output switches.
_GENERIC_FIELDS = {
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "use_cache", "output_hidden_states", "output_attentions", "return_dict", "torchscript",
    "is_encoder_decoder", "is_decoder", "add_cross_attention", "tie_encoder_decoder",
    "id2label", "label2id", "num_labels", "problem_type", "finetuning_task", "prefix",
    "tokenizer_class", "task_specific_params", "pruned_heads", "chunk_size_feed_forward",
    "cross_attention_hidden_size", "max_length", "min_length", "do_sample", "early_stopping",
    "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p",
    "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens",
    # Initialization-only knobs (the weights are loaded, not initialized).
    "initializer_range", "rescale_prenorm_residual",
}

# ``transformers``' defaults for fields a config.json may omit (as its config classes have).
_MAMBA1_DEFAULTS = dict(
    vocab_size=50280, hidden_size=768, state_size=16, num_hidden_layers=32,
    layer_norm_epsilon=1e-5, expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True,
    hidden_act="silu", residual_in_fp32=True, time_step_rank="auto", time_step_scale=1.0,
    time_step_min=0.001, time_step_max=0.1, time_step_init_scheme="random",
    time_step_floor=1e-4, tie_word_embeddings=True,
)
# Mamba-1 fields that only choose a compute path in ``transformers`` (same math).
_MAMBA1_PATH_FIELDS = {"use_mambapy", "use_associative_scan", "fused_add_norm"}
# Mamba-1 fields derived from others, checked for consistency.
_MAMBA1_DERIVED = {"intermediate_size", "d_model", "n_layer", "rms_norm", "ssm_cfg",
                   "tie_embeddings", "pad_vocab_size_multiple"}

_MAMBA2_DEFAULTS = dict(
    num_heads=128, head_dim=64, vocab_size=32768, hidden_size=4096, state_size=128,
    num_hidden_layers=64, layer_norm_epsilon=1e-5, expand=2, conv_kernel=4, n_groups=8,
    use_bias=False, use_conv_bias=True, hidden_act="silu", residual_in_fp32=True,
    time_step_min=0.001, time_step_max=0.1, time_step_floor=1e-4,
    time_step_limit=(0.0, math.inf), chunk_size=256, tie_word_embeddings=False,
)
# Mamba-2 has no dt projection, so ``time_step_rank`` is unused; the other two are Mamba-1
# init knobs some older Mamba-2 configs carry.
_MAMBA2_UNUSED = {"time_step_rank", "time_step_scale", "time_step_init_scheme"}
_MAMBA2_DERIVED = {"rms_norm", "norm_before_gate", "intermediate_size", "d_model", "n_layer",
                   "tie_embeddings"}

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _decode_floats(value):
    """Undo ``transformers``' JSON encoding of non-finite floats ({"__float__": "Infinity"})."""
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _decode_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_floats(v) for v in value]
    return value


class _Fields:
    """Typed access to config.json fields, falling back to ``transformers``' defaults;
    a value of the wrong type is an error naming the field."""

    def __init__(self, raw: dict, defaults: dict, source: str):
        self.raw, self.defaults, self.source = raw, defaults, source

    def get(self, name: str, kind: type | tuple[type, ...]):
        value = self.raw.get(name, self.defaults.get(name))
        ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _tuple(kind))
        if not ok:
            names = "/".join(k.__name__ for k in _tuple(kind))
            raise ValueError(f"{self.source}: field {name!r} must be {names}, got {value!r}")
        return value

    def positive_int(self, name: str) -> int:
        value = self.get(name, int)
        if value <= 0:
            raise ValueError(f"{self.source}: field {name!r} must be a positive integer, "
                             f"got {value}")
        return value


def _tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _check_unknown(raw: dict, known: set, source: str, model_type: str) -> None:
    # Leading-underscore keys ("_name_or_path", "_commit_hash") are transformers' bookkeeping.
    unknown = sorted(k for k in raw if k not in known and not k.startswith("_"))
    if unknown:
        raise ValueError(f"{source}: unknown or unsupported {model_type} config fields "
                         f"{unknown}; mimetic cannot tell how they change the model")


def _check_common(f: _Fields) -> None:
    eps = f.get("layer_norm_epsilon", (int, float))
    if eps != NORM_EPS:
        raise ValueError(f"{f.source}: layer_norm_epsilon={eps} is not supported: mimetic's "
                         f"norms use eps={NORM_EPS}")
    act = f.get("hidden_act", str)
    if act not in ("silu", "swish"):
        raise ValueError(f"{f.source}: hidden_act={act!r} is not supported (Mamba uses 'silu')")


def _check_agree(raw: dict, f: _Fields, derived: dict) -> None:
    """Fields that restate others must agree with them. Older configs (e.g.
    state-spaces/mamba-*-hf) also carry mamba_ssm's names for the same settings."""
    derived = dict(derived, d_model=f.get("hidden_size", int),
                   n_layer=f.get("num_hidden_layers", int),
                   tie_embeddings=f.get("tie_word_embeddings", bool))
    for name, expected in derived.items():
        if name in raw and raw[name] != expected:
            raise ValueError(f"{f.source}: contradictory config: {name}={raw[name]!r} but the "
                             f"other fields imply {expected!r}")


def _mamba1_config(raw: dict, source: str) -> MambaConfig:
    f = _Fields(raw, _MAMBA1_DEFAULTS, source)
    _check_unknown(raw, set(_MAMBA1_DEFAULTS) | _GENERIC_FIELDS | _MAMBA1_PATH_FIELDS
                   | _MAMBA1_DERIVED, source, "mamba")
    _check_common(f)
    d_model, n_layer = f.positive_int("hidden_size"), f.positive_int("num_hidden_layers")
    expand = f.get("expand", (int, float))
    dt_rank = f.get("time_step_rank", (int, str))
    if isinstance(dt_rank, str) and dt_rank != "auto":
        raise ValueError(f"{source}: time_step_rank must be an integer or 'auto', got {dt_rank!r}")
    _check_agree(raw, f, dict(intermediate_size=int(expand * d_model), rms_norm=True, ssm_cfg={}))
    scheme = f.get("time_step_init_scheme", str)
    if scheme not in ("random", "constant"):
        raise ValueError(f"{source}: time_step_init_scheme must be 'random' or 'constant', "
                         f"got {scheme!r}")
    ssm_cfg = dict(
        layer=MAMBA1, d_state=f.positive_int("state_size"), d_conv=f.positive_int("conv_kernel"),
        expand=expand, dt_rank=dt_rank, conv_bias=f.get("use_conv_bias", bool),
        bias=f.get("use_bias", bool),
        # Initialization knobs: kept so that re-initializing the loaded model means the same.
        dt_min=f.get("time_step_min", (int, float)), dt_max=f.get("time_step_max", (int, float)),
        dt_init=scheme, dt_scale=f.get("time_step_scale", (int, float)),
        dt_init_floor=f.get("time_step_floor", (int, float)),
    )
    return _lm_config(f, d_model, n_layer, ssm_cfg)


def _mamba2_config(raw: dict, source: str) -> MambaConfig:
    f = _Fields(raw, _MAMBA2_DEFAULTS, source)
    _check_unknown(raw, set(_MAMBA2_DEFAULTS) | _GENERIC_FIELDS | _MAMBA2_UNUSED
                   | _MAMBA2_DERIVED, source, "mamba2")
    _check_common(f)
    d_model, n_layer = f.positive_int("hidden_size"), f.positive_int("num_hidden_layers")
    expand = f.get("expand", (int, float))
    d_inner = int(expand * d_model)
    nheads, headdim = f.positive_int("num_heads"), f.positive_int("head_dim")
    ngroups = f.positive_int("n_groups")
    if nheads * headdim != d_inner:
        raise ValueError(f"{source}: contradictory config: num_heads * head_dim = "
                         f"{nheads} * {headdim} = {nheads * headdim} but hidden_size * expand "
                         f"= {d_model} * {expand} = {d_inner}")
    if nheads % ngroups != 0:
        raise ValueError(f"{source}: n_groups={ngroups} must divide num_heads={nheads}")
    _check_agree(raw, f, dict(intermediate_size=d_inner))
    # transformers' Mamba-2 always gates before its RMSNorm; other settings are not what it
    # computes, so we refuse rather than guess.
    for name, supported in (("rms_norm", True), ("norm_before_gate", False)):
        if name in raw and raw[name] is not supported:
            raise ValueError(f"{source}: {name}={raw[name]!r} is not supported (only {supported})")
    limit = f.get("time_step_limit", (list, tuple))
    numeric = len(limit) == 2 and all(isinstance(v, (int, float)) for v in limit)
    if not numeric or limit[0] > limit[1]:
        raise ValueError(f"{source}: time_step_limit must be [min, max] with min <= max, "
                         f"got {limit!r}")
    ssm_cfg = dict(
        layer=MAMBA2, d_state=f.positive_int("state_size"), d_conv=f.positive_int("conv_kernel"),
        expand=expand, headdim=headdim, ngroups=ngroups,
        # A list, as JSON gives it back: the config then survives our save/load unchanged.
        dt_limit=[float(limit[0]), float(limit[1])], chunk_size=f.positive_int("chunk_size"),
        conv_bias=f.get("use_conv_bias", bool), bias=f.get("use_bias", bool),
        rmsnorm=True, norm_before_gate=False,
        dt_min=f.get("time_step_min", (int, float)), dt_max=f.get("time_step_max", (int, float)),
        dt_init_floor=f.get("time_step_floor", (int, float)),
    )
    return _lm_config(f, d_model, n_layer, ssm_cfg)


def _lm_config(f: _Fields, d_model: int, n_layer: int, ssm_cfg: dict) -> MambaConfig:
    return MambaConfig(
        d_model=d_model, n_layer=n_layer, vocab_size=f.positive_int("vocab_size"),
        ssm_cfg=ssm_cfg, rms_norm=True, residual_in_fp32=f.get("residual_in_fp32", bool),
        # transformers' vocab_size is already the number of embedding rows: no extra padding.
        pad_vocab_size_multiple=1, tie_embeddings=f.get("tie_word_embeddings", bool),
    )


def config_from_transformers(raw: dict, source: str = "config.json") -> MambaConfig:
    """Map a ``transformers`` Mamba / Mamba2 ``config.json`` dict to our :class:`MambaConfig`.

    Raises ``ValueError`` naming the field for unknown fields, contradictory fields, or
    settings we cannot reproduce exactly (e.g. ``layer_norm_epsilon`` other than 1e-5).
    """
    raw = _decode_floats(raw)
    model_type = raw.get("model_type")
    if model_type == "mamba":
        return _mamba1_config(raw, source)
    if model_type == "mamba2":
        return _mamba2_config(raw, source)
    raise ValueError(f"{source}: model_type must be 'mamba' or 'mamba2', got {model_type!r}")


def read_transformers_weights(path: Path) -> tuple[dict, str]:
    """Read every tensor of the checkpoint in directory ``path`` (CPU). Returns the state
    dict under ``transformers``' names and the file it came from (for messages)."""
    for name in _WEIGHT_FILES:
        file = path / name
        if file.is_file():
            break
    else:
        raise FileNotFoundError(f"no weights in {path}: expected one of {list(_WEIGHT_FILES)}")
    if not name.endswith(".index.json"):
        return read_weights(file), str(file)
    try:
        weight_map = json.loads(file.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{file}: not a valid shard index ({e!r})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in weight_map.items()):
        raise ValueError(f"{file}: weight_map must map tensor names to shard file names")
    state = {}
    for shard in sorted(set(weight_map.values())):
        shard_file = _shard_path(path, shard, file)
        if not shard_file.is_file():
            raise FileNotFoundError(f"{file} lists shard {shard!r}, which is missing from {path}")
        state.update(read_weights(shard_file))
    absent = sorted(k for k in weight_map if k not in state)
    if absent:
        raise ValueError(f"{file}: tensors listed in the index are absent from their shards: "
                         f"{absent[:8]}")
    return state, str(file)


def _shard_path(path: Path, shard: str, index: Path) -> Path:
    """The shard file ``shard`` of the index ``index``: inside the checkpoint folder ``path``
    (after resolving links and ``..``), a ``.safetensors`` or ``.bin`` file; an index
    pointing elsewhere is refused (it would read a file the folder does not hold)."""
    shard_file = path / shard
    root = path.resolve()
    if not shard or Path(shard).is_absolute() or not shard_file.resolve().is_relative_to(root):
        raise ValueError(f"{index} lists shard {shard!r}, which lies outside the checkpoint folder {path}")
    if shard_file.suffix not in (".safetensors", ".bin"):
        raise ValueError(f"{index} lists shard {shard!r}: shards are .safetensors or .bin files")
    return shard_file


def state_from_transformers(state: dict, config: MambaConfig, source: str) -> dict:
    """Rename ``transformers``' tensors to ours; drop a stored copy of a tied LM head
    (after checking it is the embedding)."""
    out = {}
    for k, v in state.items():
        if k == "backbone.embeddings.weight":
            k = "backbone.embedding.weight"
        if k in out:
            raise ValueError(f"{source}: holds both backbone.embeddings.weight and "
                             "backbone.embedding.weight")
        out[k] = v
    if config.tie_embeddings and "lm_head.weight" in out:
        head, emb = out.pop("lm_head.weight"), out.get("backbone.embedding.weight")
        if emb is None or head.shape != emb.shape or not torch.equal(head, emb):
            raise ValueError(f"{source}: tie_word_embeddings is true but lm_head.weight differs "
                             "from the embedding")
    return out


def load_transformers_checkpoint(cls, path, raw: dict, device=None, dtype=None):
    """Build ``cls`` (:class:`~mimetic.models.MambaLM`) from the ``transformers`` checkpoint
    in directory ``path`` whose parsed ``config.json`` is ``raw``."""
    path = Path(path)
    config = config_from_transformers(raw, source=str(path / "config.json"))
    state, source = read_transformers_weights(path)
    state = state_from_transformers(state, config, source)
    model = cls(config, device=device, dtype=dtype)
    load_state_into(model, state, source)
    return model
