"""A finished grid point's row of ``results.csv``: training result, length evaluations, file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ...tasks import Task, evaluate
from ..config import TrainConfig
from ..loop import TrainResult, heads_at_scored
from .config import GridPoint, SweepConfig

ROW_FILE = "row.json"


def result_row(point: GridPoint, task: Task, result: TrainResult) -> dict[str, Any]:
    """Grid keys, seq_len, final/best metrics, steps_to_target, steps, time, tokens, n_params."""
    row: dict[str, Any] = {**point.to_dict(), "seq_len": task.seq_len}
    final, best = result.final or {}, result.best or {}
    row.update(
        final_token_acc=final.get("token_acc"),
        final_seq_acc=final.get("seq_acc"),
        final_loss=final.get("loss"),
        best_token_acc=best.get("token_acc"),
        best_seq_acc=best.get("seq_acc"),
        best_step=best.get("step"),
        steps_to_target=result.steps_to_target,
        steps=result.step,
        stopped_early=result.stopped_early,
        elapsed_s=round(result.elapsed, 3),
        tokens=result.tokens,
        n_params=result.n_params,
    )
    return row


def length_evals(cfg: SweepConfig, model: torch.nn.Module, task: Task, tcfg: TrainConfig) -> dict[str, float]:
    """``gen_token_acc@n`` / ``gen_seq_acc@n`` of the trained ``model`` for each ``[eval]``
    length n (the length generalization columns), on ``task.length_eval_task(n)`` (for
    copy_jelassi: strings of exactly n letters, so these are Jelassi et al.'s character
    accuracy and string exact match); empty without ``[eval] lengths``."""
    out: dict[str, float] = {}
    for n in cfg.eval.get("lengths", []):
        at_n = task.length_eval_task(n)
        m = evaluate(
            model, at_n,
            num_batches=cfg.eval.get("batches", 4),
            batch_size=cfg.eval.get("batch_size", tcfg.eval_batch_size or tcfg.batch_size),
            seed=tcfg.eval_seed,
            autocast_dtype=torch.bfloat16 if next(model.parameters()).is_cuda else None,
            at_scored=heads_at_scored(model, at_n),
        )
        out[f"gen_token_acc@{n}"] = m["token_acc"]
        out[f"gen_seq_acc@{n}"] = m["seq_acc"]
    return out


def write_row(run_dir: Path, row: dict[str, Any]) -> None:
    """Write ``run_dir/row.json`` atomically; it marks the point finished."""
    tmp = run_dir / (ROW_FILE + ".tmp")
    tmp.write_text(json.dumps(row))
    os.replace(tmp, run_dir / ROW_FILE)
