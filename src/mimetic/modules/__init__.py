"""Layers: Mamba (v1), Mamba2, attention baseline, MLP, norms and the residual block."""
from .attention import MHA
from .block import Block
from .mamba import Mamba
from .mamba2 import Mamba2
from .mlp import GatedMLP
from .norm import RMSNorm, RMSNormGated

__all__ = ["Block", "GatedMLP", "MHA", "Mamba", "Mamba2", "RMSNorm", "RMSNormGated"]
