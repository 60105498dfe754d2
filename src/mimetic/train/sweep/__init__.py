"""Sweeps from TOML files: ``run_sweep("experiments/copy_length.toml", "runs/copy_length")``.

The ``mimetic sweep X.toml`` command calls :func:`run_sweep`. File format: see
``mimetic/train/sweep/config.py``.
"""
from .config import GRID_KEYS, GridPoint, SweepConfig, load_sweep, parse_sweep
from .plots import plot_sweep
from .runner import SweepResult, build_model, run_point, run_sweep, summarize, write_results

__all__ = [
    "run_sweep",
    "SweepResult",
    "load_sweep",
    "parse_sweep",
    "SweepConfig",
    "GridPoint",
    "GRID_KEYS",
    "build_model",
    "run_point",
    "plot_sweep",
    "summarize",
    "write_results",
]
