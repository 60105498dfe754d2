"""The layer kinds, one spelling everywhere: the values of ``MambaConfig.ssm_cfg["layer"]``, of
a sweep's ``grid.layer`` and of the CLI's ``--layer``, what :func:`mimetic.analysis.layer_kind`
returns and what mimetic init recognizes. Imports nothing, so every layer of the package can
use it."""

MAMBA1 = "Mamba1"  # mimetic.modules.Mamba
MAMBA2 = "Mamba2"  # mimetic.modules.Mamba2
LINEAR_ATTENTION = "LinearAttention"  # mimetic.modules.LinearAttention, the no-decay baseline
#: Causal softmax attention (mimetic.modules.MHA): the layers of ``attn_layer_idx``; in a sweep's
#: grid, a model of attention layers only.
ATTENTION = "attention"

#: The kinds ``ssm_cfg["layer"]`` may name.
SSM_LAYERS = (MAMBA1, MAMBA2, LINEAR_ATTENTION)
#: The kinds mimetic initialization changes (LinearAttention already is what it makes a Mamba
#: layer start from).
MIMETIC_LAYERS = (MAMBA1, MAMBA2)
