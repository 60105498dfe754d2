"""Training: ``train(model, task, TrainConfig(...)) -> TrainResult``; sweeps in ``mimetic.train.sweep``.

    from mimetic.tasks import make_task
    from mimetic.train import TrainConfig, train
    result = train(model, make_task("copy", copy_len=32), TrainConfig(steps=2000, out_dir="runs/x"))
"""
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .loop import NonFiniteLossError, NonFiniteWeightsError, TrainResult, batch_for_step, train
from .metrics import read_metrics
from .optim import build_optimizer, lr_at, param_groups, wants_decay

__all__ = [
    "TrainConfig",
    "TrainResult",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "train",
    "batch_for_step",
    "build_optimizer",
    "param_groups",
    "wants_decay",
    "lr_at",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "read_metrics",
]
