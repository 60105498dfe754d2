"""The main job: train one small model twice, with default and with mimetic
initialization, on the copy task (CPU-sized), and show the difference as a table and a plot."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from .layer_kinds import MAMBA2
from .models import MambaConfig, MambaLM
from .tasks import make_task
from .train import TrainConfig, train


@dataclass
class DemoSettings:
    """The demo's knobs; the defaults are the smallest setting found where the effect shows
    on a 2-core CPU within a few minutes (see README)."""

    task: str = "copy"
    copy_len: int = 32
    vocab: int = 16
    layer: str = MAMBA2
    d_model: int = 64
    n_layer: int = 2
    d_state: int = 16
    headdim: int = 16
    steps: int = 400
    batch_size: int = 32
    lr: float = 6e-3
    warmup_steps: int = 30
    eval_every: int = 25
    thresholds: tuple[float, ...] = (0.5, 0.8)
    seed: int = 0


def demo_model_config(s: DemoSettings, vocab_size: int, init: str) -> MambaConfig:
    ssm = {"layer": s.layer, "d_state": s.d_state}
    if s.layer == MAMBA2:
        ssm.update(headdim=s.headdim, chunk_size=64)
    return MambaConfig(d_model=s.d_model, n_layer=s.n_layer, vocab_size=vocab_size, ssm_cfg=ssm,
                       init=init)


def run_demo(s: DemoSettings, out_dir: str | Path, progress: bool = True) -> dict:
    """Train default and mimetic models; write ``results.json`` and ``demo.png`` under
    ``out_dir``; return {init: TrainResult as dict}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = make_task(s.task, **({"copy_len": s.copy_len, "vocab": s.vocab} if s.task == "copy" else {}))
    results = {}
    for init in ("default", "mimetic"):
        torch.manual_seed(s.seed)
        model = MambaLM(demo_model_config(s, task.vocab_size, init))
        cfg = TrainConfig(steps=s.steps, batch_size=s.batch_size, lr=s.lr, warmup_steps=s.warmup_steps,
                          eval_every=s.eval_every, eval_batches=2, target_acc=None, seed=s.seed,
                          out_dir=str(out / init), progress=progress, device="cpu",
                          resume=True)  # a re-run continues (or returns) its runs; the command has no --resume
        results[init] = train(model, task, cfg).to_dict()
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plot_demo(results, out / "demo.png", title=f"{s.layer} on {s.task} (copy_len={s.copy_len}), CPU")
    return results


def steps_to(history: list[dict], acc: float) -> int | None:
    """First eval step whose token accuracy reaches ``acc``."""
    return next((h["step"] for h in history if h["token_acc"] >= acc), None)


def summary_table(results: dict, thresholds: tuple[float, ...]) -> str:
    """A side-by-side text table of the runs: final and best held-out token accuracy,
    sequence accuracy, the first step reaching each accuracy threshold, wall time."""
    head = f"{'init':<10}{'final acc':>10}{'best acc':>10}{'seq acc':>9}"
    head += "".join(f"{'steps to ' + format(t, '.0%'):>15}" for t in thresholds) + f"{'time s':>8}"
    rows = [head]
    for init, r in results.items():
        hist = r["history"]
        row = (f"{init:<10}{r['final']['token_acc']:>10.3f}{max(h['token_acc'] for h in hist):>10.3f}"
               f"{r['final']['seq_acc']:>9.3f}")
        for t in thresholds:
            reach = steps_to(hist, t)
            row += f"{str(reach) if reach else 'never':>15}"
        rows.append(row + f"{r['elapsed']:>8.0f}")
    return "\n".join(rows)


def plot_demo(results: dict, path: str | Path, title: str) -> None:
    """Accuracy vs training step, one line per initialization. A bare Figure written to a
    file: pyplot's global backend (a notebook's, say) is left alone."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for init, r in results.items():
        steps = [h["step"] for h in r["history"]]
        ax.plot(steps, [h["token_acc"] for h in r["history"]], marker="o", ms=3, label=f"{init} init")
    ax.set(xlabel="training step", ylabel="held-out token accuracy", title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
