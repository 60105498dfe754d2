"""Look inside: the implicit attention maps of Mamba layers, their pictures and summaries.

    from mimetic.analysis import attention_maps, plot_attention_maps, map_summary
    maps = attention_maps(model, input_ids)             # {layer: (batch, heads, L, L)}
    plot_attention_maps(maps, "maps.png")               # layers x heads grid
    map_summary(maps[0], "uniform_causal")              # one float per layer, in [0, 1]

``attn_command`` is what ``mimetic attn`` runs.
"""
from .command import AttnResult, attn_command
from .maps import (
    DEFAULT_MAX_BYTES,
    MapMemoryError,
    attention_maps,
    layer_kind,
    map_heads,
    mixer_attention_map,
    mixer_inputs,
    scan_inputs,
    selective_scan_map,
    softmax_attention_map,
    ssd_map,
)
from .plot import plot_attention_maps
from .separation import bc_scores, bc_separation, separation
from .summary import PATTERNS, map_summary, pattern_matrix

__all__ = [
    "DEFAULT_MAX_BYTES",
    "PATTERNS",
    "AttnResult",
    "MapMemoryError",
    "attention_maps",
    "attn_command",
    "bc_scores",
    "bc_separation",
    "layer_kind",
    "map_heads",
    "map_summary",
    "mixer_attention_map",
    "mixer_inputs",
    "pattern_matrix",
    "plot_attention_maps",
    "scan_inputs",
    "selective_scan_map",
    "separation",
    "softmax_attention_map",
    "ssd_map",
]
