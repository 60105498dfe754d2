"""Many same-shape models trained as one program (sweeps at GPU speed): see ``model.py``
(the stacked forward), ``optim.py`` (per-member AdamW and clipping) and ``train.py``."""
from .model import EnsembleLM, ensemble_problem, shape_signature
from .train import evaluate_ensemble, train_ensemble

__all__ = ["EnsembleLM", "ensemble_problem", "evaluate_ensemble", "shape_signature", "train_ensemble"]
