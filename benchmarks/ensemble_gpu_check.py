"""GPU correctness of the ensemble path: the numbers behind "a K-model ensemble is exactly K runs".

On a CUDA device, for Mamba1, Mamba2 and attention models (2 layers, d_model 64, copy task):

1. ``train_ensemble`` of 3 members (two seeds, two inits, three learning rates), CUDA graph
   on, against 3 separate eager ``train(..., cuda_graph=False)`` runs: the largest difference
   of any eval record (loss, train loss) and of any final parameter; in fp32 (``amp=False``,
   where round-off is the only difference) and in bf16 autocast (the default on CUDA).
2. The same ensemble with the graph off: graph replay against eager steps.
3. A member made to diverge (lr 1e4, no clipping) beside two healthy ones: the step its
   error names, the step a lone ``train()`` names, and the healthy members' differences
   to their lone runs.

Prints one table and writes every number to ``--out``/ensemble_gpu_check.json. A check, not
a test: it records numbers, it asserts nothing.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path

import torch

from harness import env_info, markdown_table, print_record, seconds, write_json
from mimetic.ensemble.train import train_ensemble
from mimetic.models import MambaConfig, MambaLM
from mimetic.tasks import make_task
from mimetic.train import TrainConfig, train
from mimetic.train.loop import NonFiniteLossError

DEVICE = "cuda"


def make_model(layer: str, seed: int, init: str, vocab: int) -> MambaLM:
    torch.manual_seed(seed)
    attn = [0, 1] if layer == "attention" else []
    ssm = {"layer": "Mamba2" if layer == "attention" else layer, "d_state": 16}
    if layer != "Mamba1":
        ssm["headdim"] = 16
    return MambaLM(MambaConfig(d_model=64, n_layer=2, vocab_size=vocab, ssm_cfg=ssm, attn_layer_idx=attn,
                               attn_cfg={"num_heads": 4, "rotary_emb_dim": 16},
                               init="default" if layer == "attention" else init))


def diffs(results_a, results_b, models_a, models_b) -> dict:
    rec = par = 0.0
    for ra, rb, ma, mb in zip(results_a, results_b, models_a, models_b):
        for x, y in zip(ra.history, rb.history):
            rec = max(rec, abs(x["loss"] - y["loss"]), abs(x["train_loss"] - y["train_loss"]))
        for (name, pa), pb in zip(ma.named_parameters(), mb.parameters()):
            d = (pa.detach().float() - pb.detach().float()).abs()
            if name.endswith("mixer.in_proj.bias") and isinstance(ma, MambaLM) and ma.config.attn_layer_idx:
                # key bias: analytically zero gradient, Adam normalizes its round-off noise
                d = torch.cat([d[:64], d[128:]])
            par = max(par, float(d.max()))
    return {"max_record_diff": rec, "max_param_diff": par}


def check(layer: str, amp: bool, steps: int) -> dict:
    task = make_task("copy", copy_len=32, vocab=16)
    specs = [(0, "default", 1e-3), (0, "mimetic", 3e-3), (1, "default", 2e-3)]
    cfgs = [TrainConfig(steps=steps, batch_size=32, lr=lr, seed=s, warmup_steps=10, eval_every=25,
                        eval_batches=1, progress=False, amp=amp, device=DEVICE) for s, _, lr in specs]
    lone_models = [make_model(layer, s, i, task.vocab_size) for s, i, _ in specs]
    ens_models = [copy.deepcopy(m) for m in lone_models]
    eager_models = [copy.deepcopy(m) for m in lone_models]
    t_lone, lone = seconds(lambda: [train(m, task, dataclasses.replace(c, cuda_graph=False))
                                    for m, c in zip(lone_models, cfgs)], DEVICE)
    t_ens, ens = seconds(lambda: train_ensemble(ens_models, task, cfgs, cuda_graph=DEVICE == "cuda"), DEVICE)
    eager = train_ensemble(eager_models, task, cfgs, cuda_graph=False)
    out = {"layer": layer, "amp": amp, "steps": steps, "lone_s": t_lone, "ensemble_s": t_ens}
    out["vs_lone"] = diffs(ens, lone, ens_models, lone_models)
    out["graph_vs_eager"] = diffs(ens, eager, ens_models, eager_models)
    return out


def divergence(layer: str, steps: int) -> dict:
    task = make_task("copy", copy_len=32, vocab=16)
    lrs = [1e-3, 1e4, 2e-3]
    cfgs = [TrainConfig(steps=steps, batch_size=32, lr=lr, seed=k, warmup_steps=0, eval_every=25,
                        grad_clip=None if lr > 1 else 1.0, eval_batches=1, progress=False, amp=False,
                        device=DEVICE) for k, lr in enumerate(lrs)]
    lone_models = [make_model(layer, k, "mimetic", task.vocab_size) for k in range(3)]
    ens_models = [copy.deepcopy(m) for m in lone_models]
    lone = []
    for m, c in zip(lone_models, cfgs):
        try:
            lone.append(train(m, task, dataclasses.replace(c, cuda_graph=False)))
        except NonFiniteLossError as e:
            lone.append(e)
    ens = train_ensemble(ens_models, task, cfgs, cuda_graph=DEVICE == "cuda")
    ok = [i for i in range(3) if not isinstance(lone[i], Exception) and not isinstance(ens[i], Exception)]
    return {"layer": layer, "lone_diverged": str(lone[1]), "ensemble_diverged": str(ens[1]),
            "healthy": diffs([ens[i] for i in ok], [lone[i] for i in ok],
                             [ens_models[i] for i in ok], [lone_models[i] for i in ok])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/ensemble_gpu_check")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of this script (no graphs)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {**env_info(DEVICE), "checks": [], "divergence": []}
    for layer in ("Mamba1", "Mamba2", "attention"):
        for amp in (False, True):
            try:
                report["checks"].append(check(layer, amp, args.steps))
            except Exception as e:  # keep the other checks
                report["checks"].append({"layer": layer, "amp": amp, "error": repr(e)})
        try:
            report["divergence"].append(divergence(layer, args.steps))
        except Exception as e:
            report["divergence"].append({"layer": layer, "error": repr(e)})
        write_json(out / "ensemble_gpu_check.json", report)
    rows = []
    for c in report["checks"]:
        if "error" in c:
            rows.append((c["layer"], c["amp"], f"error: {c['error'][:80]}", "", "", ""))
            continue
        a, b = c["vs_lone"], c["graph_vs_eager"]
        rows.append((c["layer"], c["amp"], f"{a['max_record_diff']:.2e} / {a['max_param_diff']:.2e}",
                     f"{b['max_record_diff']:.2e} / {b['max_param_diff']:.2e}", f"{c['lone_s']:.1f}",
                     f"{c['ensemble_s']:.1f}"))
    print(markdown_table(("layer", "amp", "ens vs lone: record / param", "graph vs eager: record / param",
                          "lone s", "ens s"), rows))
    for d in report["divergence"]:
        print_record(d)


if __name__ == "__main__":
    main()
