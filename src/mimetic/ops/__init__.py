"""The math of Mamba, one folder per op; each public function hides its backends."""
from .causal_conv1d import causal_conv1d, causal_conv1d_update
from .rms_norm import rms_norm
from .selective_scan import selective_scan
from .selective_scan.step import selective_state_update
from .ssd import ssd_scan
from .ssd.step import ssd_state_update

__all__ = [
    "causal_conv1d",
    "causal_conv1d_update",
    "rms_norm",
    "selective_scan",
    "selective_state_update",
    "ssd_scan",
    "ssd_state_update",
]
