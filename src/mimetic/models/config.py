"""Model configuration: ``mamba_ssm``'s ``MambaConfig`` fields plus the initialization."""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field, fields

from .._validate import bool_arg, int_arg, numpy_note
from ..init import MIMETIC_KNOBS, MimeticConfig
from ..layer_kinds import LINEAR_ATTENTION, MAMBA1, MAMBA2, MIMETIC_LAYERS
from ..modules import MHA, LinearAttention, Mamba, Mamba2
from ..modules._args import check_mamba2_args, check_mamba_args, check_mha_args

#: ``ssm_cfg["layer"]`` (a kind of :mod:`mimetic.layer_kinds`) -> mixer class; mimetic init
#: applies to the kinds of ``MIMETIC_LAYERS`` only.
LAYER_TYPES = {MAMBA1: Mamba, MAMBA2: Mamba2, LINEAR_ATTENTION: LinearAttention}
INITS = ("default", "mimetic")
#: Fields that ``from_dict`` accepts (booleans) and drops, because nothing here reads them:
#: ``fused_add_norm`` is ``mamba_ssm``'s switch for its fused add + norm kernel (the math is
#: the same), found in its config.json files and in ours written before it was dropped.
RETIRED_FIELDS = ("fused_add_norm",)
_RESERVED = {"self", "d_model", "embed_dim", "layer_idx", "device", "dtype"}


def _accepted_kwargs(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - _RESERVED


@dataclass
class MambaConfig:
    """Configuration of :class:`~mimetic.models.MambaLM`.

    Fields as in ``mamba_ssm``: ``ssm_cfg`` holds the mixer's constructor arguments plus
    ``"layer"`` ("Mamba1", "Mamba2" or "LinearAttention"; default "Mamba1"); layers listed in
    ``attn_layer_idx`` are causal attention (``attn_cfg``: ``num_heads``, ``rotary_emb_dim``,
    ...) instead; ``d_intermediate > 0`` adds a gated MLP after each mixer. Ours: ``init`` is
    "default" (``mamba_ssm``'s) or "mimetic", with ``init_cfg`` the knobs of
    :class:`~mimetic.init.MimeticConfig`.
    """

    d_model: int = 2560
    d_intermediate: int = 0
    n_layer: int = 64
    vocab_size: int = 50277
    ssm_cfg: dict = field(default_factory=dict)
    attn_layer_idx: list = field(default_factory=list)
    attn_cfg: dict = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    init: str = "default"
    init_cfg: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"MambaConfig.{name} must be a positive integer, got {value!r}{numpy_note(value)}")
        int_arg("MambaConfig", "d_intermediate", self.d_intermediate, minimum=0)
        for name in ("rms_norm", "residual_in_fp32", "tie_embeddings"):
            bool_arg("MambaConfig", name, getattr(self, name))
        for name in ("ssm_cfg", "attn_cfg", "init_cfg"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"MambaConfig: {name}={getattr(self, name)!r} must be a dict")
        if not isinstance(self.attn_layer_idx, (list, tuple)) or \
                not all(isinstance(i, int) and not isinstance(i, bool) for i in self.attn_layer_idx):
            raise ValueError(f"MambaConfig: attn_layer_idx={self.attn_layer_idx!r} must be a list of layer indices")
        layer = self.layer_type
        if layer not in LAYER_TYPES:
            raise ValueError(f"ssm_cfg['layer'] must be one of {list(LAYER_TYPES)}, got {layer!r}")
        unknown = set(self.ssm_cfg) - {"layer"} - _accepted_kwargs(LAYER_TYPES[layer])
        if unknown:
            raise ValueError(f"unknown ssm_cfg keys for {layer}: {sorted(unknown)}")
        if len(set(self.attn_layer_idx)) != len(self.attn_layer_idx):
            raise ValueError(f"MambaConfig: attn_layer_idx={list(self.attn_layer_idx)!r} names a layer twice")
        bad_idx = [i for i in self.attn_layer_idx if not 0 <= i < self.n_layer]
        if bad_idx:
            raise ValueError(f"attn_layer_idx {bad_idx} out of range for n_layer={self.n_layer}")
        if self.attn_layer_idx:
            if "num_heads" not in self.attn_cfg:
                raise ValueError("attn_cfg must give num_heads when attn_layer_idx is set")
            unknown = set(self.attn_cfg) - _accepted_kwargs(MHA)
            if unknown:
                raise ValueError(f"unknown attn_cfg keys: {sorted(unknown)}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        unknown = set(self.init_cfg) - set(MIMETIC_KNOBS)
        if unknown:
            raise ValueError(f"unknown init_cfg keys: {sorted(unknown)} (known: {list(MIMETIC_KNOBS)})")
        if self.init_cfg and self.init != "mimetic":
            raise ValueError("init_cfg is given but init is not 'mimetic'")
        self._check_values(layer)

    def _check_values(self, layer: str) -> None:
        """The mixers' and the init's argument values (types, ranges), as their constructors
        check them, so that a bad config fails here (e.g. when a sweep file is loaded)."""
        if len(self.attn_layer_idx) < self.n_layer:
            if layer == LINEAR_ATTENTION:
                LinearAttention(self.d_model, **self.mixer_kwargs(), device="meta")  # its own checks
            else:
                (check_mamba_args if layer == MAMBA1 else check_mamba2_args)(self.d_model, **self.mixer_kwargs())
        if self.init == "mimetic" and layer not in MIMETIC_LAYERS and len(self.attn_layer_idx) < self.n_layer:
            raise ValueError(f"MambaConfig: init='mimetic' applies to {list(MIMETIC_LAYERS)} layers, not "
                             f"{layer} (a baseline: use init='default')")
        if self.attn_layer_idx:
            check_mha_args(self.d_model, **self.attn_cfg)
        if self.init == "mimetic":
            MimeticConfig(**self.init_cfg)

    @property
    def layer_type(self) -> str:
        return self.ssm_cfg.get("layer", MAMBA1)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    def mixer_kwargs(self) -> dict:
        return {k: v for k, v in self.ssm_cfg.items() if k != "layer"}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MambaConfig:
        """Build from a dict; unknown keys are an error naming them, ``RETIRED_FIELDS`` are
        checked to be booleans and dropped."""
        if not isinstance(d, dict):
            raise ValueError(f"MambaConfig.from_dict takes a dict of fields, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known - set(RETIRED_FIELDS)
        if unknown:
            raise ValueError(f"unknown MambaConfig fields: {sorted(unknown)}")
        for name in RETIRED_FIELDS:
            if name in d:
                bool_arg("MambaConfig", name, d[name])
        return cls(**{k: v for k, v in d.items() if k in known})
