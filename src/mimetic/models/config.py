"""Model configuration: ``mamba_ssm``'s ``MambaConfig`` fields plus the initialization."""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field, fields

from ..init import MIMETIC_KNOBS
from ..modules import MHA, Mamba, Mamba2

LAYER_TYPES = {"Mamba1": Mamba, "Mamba2": Mamba2}
INITS = ("default", "mimetic")
_RESERVED = {"self", "d_model", "embed_dim", "layer_idx", "device", "dtype"}


def _accepted_kwargs(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - _RESERVED


@dataclass
class MambaConfig:
    """Configuration of :class:`~mimetic.models.MambaLM`.

    Fields as in ``mamba_ssm``: ``ssm_cfg`` holds the mixer's constructor arguments plus
    ``"layer"`` ("Mamba1" or "Mamba2"); layers listed in ``attn_layer_idx`` are causal
    attention (``attn_cfg``: ``num_heads``, ``rotary_emb_dim``, ...) instead;
    ``d_intermediate > 0`` adds a gated MLP after each mixer. Ours: ``init`` is "default"
    (``mamba_ssm``'s) or "mimetic", with ``init_cfg`` the knobs of
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
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    init: str = "default"
    init_cfg: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"MambaConfig.{name} must be a positive integer, got {value!r}")
        if self.d_intermediate < 0:
            raise ValueError(f"MambaConfig.d_intermediate must be >= 0, got {self.d_intermediate}")
        layer = self.ssm_cfg.get("layer", "Mamba1")
        if layer not in LAYER_TYPES:
            raise ValueError(f"ssm_cfg['layer'] must be one of {list(LAYER_TYPES)}, got {layer!r}")
        unknown = set(self.ssm_cfg) - {"layer"} - _accepted_kwargs(LAYER_TYPES[layer])
        if unknown:
            raise ValueError(f"unknown ssm_cfg keys for {layer}: {sorted(unknown)}")
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

    @property
    def layer_type(self) -> str:
        return self.ssm_cfg.get("layer", "Mamba1")

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    def mixer_kwargs(self) -> dict:
        return {k: v for k, v in self.ssm_cfg.items() if k != "layer"}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MambaConfig":
        """Build from a dict; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MambaConfig fields: {sorted(unknown)}")
        return cls(**d)
