"""Synthetic recall tasks: copy, copy_jelassi, mqar, selective_copy, induction_heads; batches
made on the fly.

    task = make_task("mqar", num_kv_pairs=8, seq_len=64)
    input_ids, targets, loss_mask = task.batch(32, torch.Generator().manual_seed(0))
    metrics = evaluate(model, task, num_batches=4, batch_size=64, seed=0)
    by_len = copy_accuracy_by_length(model, make_task("copy_jelassi"), range(5, 101, 5))

See ``base.py`` for the conventions shared by all tasks and each task's docstring for its
exact token format.
"""
from .base import TASKS, Task, derive_seed, make_generator, make_task, register_task, scored_slots
from .copy import CopyTask
from .copy_jelassi import JelassiCopyTask
from .evaluate import EVAL_STREAM, EvalTally, copy_accuracy_by_length, eval_batches, evaluate, model_logits
from .induction_heads import InductionHeadsTask
from .mqar import MQARTask
from .selective_copy import SelectiveCopyTask

__all__ = [
    "TASKS",
    "Task",
    "CopyTask",
    "JelassiCopyTask",
    "MQARTask",
    "SelectiveCopyTask",
    "InductionHeadsTask",
    "make_task",
    "register_task",
    "derive_seed",
    "make_generator",
    "scored_slots",
    "evaluate",
    "copy_accuracy_by_length",
    "EvalTally",
    "eval_batches",
    "model_logits",
    "EVAL_STREAM",
]
