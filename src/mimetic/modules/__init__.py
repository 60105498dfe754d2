"""Layers: Mamba (v1), Mamba2, the attention and linear-attention baselines, MLP, norms and the residual block."""
from .attention import MHA
from .block import Block
from .linear_attention import LinearAttention
from .mamba import Mamba
from .mamba2 import Mamba2
from .mlp import GatedMLP
from .norm import RMSNorm, RMSNormGated

__all__ = ["Block", "GatedMLP", "LinearAttention", "MHA", "Mamba", "Mamba2", "RMSNorm", "RMSNormGated"]
