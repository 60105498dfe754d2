"""Initializations: ``mamba_ssm``'s default, and mimetic initialization."""
from .default import default_init_mamba2_, default_init_mamba_, init_lm_weights_, inverse_softplus
from .mimetic import MIMETIC_KNOBS, MimeticConfig, mimetic_init_

__all__ = [
    "MIMETIC_KNOBS",
    "MimeticConfig",
    "default_init_mamba2_",
    "default_init_mamba_",
    "init_lm_weights_",
    "inverse_softplus",
    "mimetic_init_",
]
