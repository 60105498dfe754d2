"""Many same-shape models trained as one program (sweeps at GPU speed)."""
from .model import EnsembleLM, shape_signature

__all__ = ["EnsembleLM", "shape_signature"]
