"""A whole language-model training step, ours vs ``mamba_ssm``'s ``MambaLMHeadModel`` with the
same config and the same weights, in one process (issue 16, part 5).

The step: embedding to logits, next-token cross-entropy in float32, backward, fused AdamW
(``torch.optim.AdamW(fused=True)`` on CUDA), parameters in float32 under bf16 autocast.
Sizes (issue 16): 24 layers, d_model 768, vocabulary 50277 (padded to a multiple of 8, as
both libraries do), batch 8, length 2048; Mamba-1 (d_state 16) and Mamba-2 (headdim 64,
d_state 128), each library's defaults otherwise.

Before timing, one step of each on the same batch from the same weights is compared: the
losses, and the relative error of the gradients of the embedding and of the first and last
layer's input projection (bf16 autocast, so close rather than equal). Then per model:
wall ms per step (``triton.testing.do_bench`` median, harness.cuda_ms), GPU kernel ms per
step (torch.profiler, harness.profile_totals; memcpy/memset apart) and peak memory of a step.

Usage (on the device, with mamba_ssm importable: benchmarks/device/peers.sh):
    python benchmarks/gpu_lm_step.py [--layers Mamba1,Mamba2] [--out DIR]
    python benchmarks/gpu_lm_step.py --smoke       # tiny sizes; on the CPU, ours only
Prints a table last; writes every number as JSON to DIR/gpu_lm_step.json and the table to
DIR/gpu_lm_step.md (benchmarks/harness.py).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch
import torch.nn.functional as F

from gpu_decode import mamba_ssm_model
from harness import (
    bench_device,
    cpu_ms,
    cuda_ms,
    env_info,
    fmt,
    markdown_table,
    print_record,
    profile_totals,
    rel_err,
    write_results,
)
from mimetic import MambaConfig, MambaLM

FULL = dict(d_model=768, n_layer=24, vocab_size=50277, batch=8, seq_len=2048)
SMOKE = dict(d_model=64, n_layer=2, vocab_size=1000, batch=2, seq_len=33)
#: ms of untimed and of timed steps for do_bench (a full-size step takes ~100 ms, so the
#: default 25/100 would time about one step)
WARMUP_MS, REP_MS = 300, 2000
PROFILE_STEPS = 5


def logits_of(model, input_ids):
    """(batch, seq_len, vocab) logits of our MambaLM (a tensor) or of MambaLMHeadModel
    (a namedtuple with ``.logits``)."""
    out = model(input_ids)
    return out if torch.is_tensor(out) else out.logits


class TrainStep:
    """One training step of ``model`` on ``tokens`` (batch, seq_len + 1): forward under
    autocast, float32 cross-entropy of each next token, backward, AdamW step."""

    def __init__(self, model, tokens, device):
        self.model, self.tokens, self.device = model, tokens, device
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, **fused)

    def autocast(self):
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def loss_and_grads(self):
        """Forward and backward, no optimizer step: the loss; the gradients left in .grad."""
        self.opt.zero_grad(set_to_none=True)
        inputs, targets = self.tokens[:, :-1], self.tokens[:, 1:]
        with self.autocast():
            logits = logits_of(self.model, inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        return loss

    def __call__(self):
        loss = self.loss_and_grads()
        self.opt.step()
        return loss


def grads_compared(ours, theirs, names):
    """Relative error of our gradient against theirs for each parameter name (same names:
    theirs was loaded from our state dict)."""
    mine, other = dict(ours.named_parameters()), dict(theirs.named_parameters())
    return {f"grad_err[{n}]": rel_err(mine[n].grad, other[n].grad) for n in names
            if n in mine and n in other and mine[n].grad is not None and other[n].grad is not None}


def compared_params(model, n_layer):
    """The embedding and the first and last layers' input projections, by name."""
    names = [n for n, _ in model.named_parameters()]
    keep = [n for n in names if "embedding" in n][:1]
    for i in (0, n_layer - 1):
        keep += [n for n in names if f"layers.{i}." in n and "in_proj.weight" in n][:1]
    return keep


def measure(step, device):
    """Wall ms (median), GPU kernel and memcpy/memset ms per step, and peak memory (GiB)."""
    rec = {}
    for _ in range(3):  # compiles and autotunes first, or do_bench's first-call estimate (used
        step()          # to size its warm-up and timed loops) would include them
    if device.type != "cuda":
        rec["wall_ms"] = cpu_ms(step)
        return rec
    rec["wall_ms"] = cuda_ms(step, warmup=WARMUP_MS, rep=REP_MS)
    totals = profile_totals(step, PROFILE_STEPS, top=8)
    rec["kernel_ms"] = totals["kernel_ms"] / PROFILE_STEPS
    rec["memcpy_memset_ms"] = totals["memcpy_memset_ms"] / PROFILE_STEPS
    rec["kernels_per_step"] = totals["kernels"] / PROFILE_STEPS
    rec["top_kernels"] = totals["top"]
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    rec["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return rec


def run_case(layer, sizes, device):
    config = MambaConfig(d_model=sizes["d_model"], n_layer=sizes["n_layer"],
                         vocab_size=sizes["vocab_size"], ssm_cfg={"layer": layer})
    torch.manual_seed(0)
    ours = MambaLM(config, device=device)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, config.vocab_size, (sizes["batch"], sizes["seq_len"] + 1),
                           generator=g).to(device)
    rec = dict(layer=layer, **sizes, n_params=sum(p.numel() for p in ours.parameters()))
    theirs, note = (mamba_ssm_model(config, ours, device, torch.float32) if device.type == "cuda"
                    else (None, "not on CUDA"))
    rec["mamba_ssm_model"] = note
    steps = {"ours": TrainStep(ours, tokens, device)}
    if theirs is not None:
        theirs.train()
        steps["mamba_ssm"] = TrainStep(theirs, tokens, device)
        # Same weights, same batch: one forward+backward each before any optimizer step.
        losses = {who: s.loss_and_grads().item() for who, s in steps.items()}
        rec.update(loss_ours=losses["ours"], loss_mamba_ssm=losses["mamba_ssm"],
                   **grads_compared(ours, theirs, compared_params(ours, config.n_layer)))
    for who, step in steps.items():
        for key, value in measure(step, device).items():
            rec[f"{who}_{key}"] = value
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_record({k: v for k, v in rec.items() if "top_kernels" not in k})
    return rec


def ratio(r, key):
    """mamba_ssm's time over ours (> 1: ours is faster), None when either is missing."""
    a, b = r.get(f"mamba_ssm_{key}"), r.get(f"ours_{key}")
    return a / b if a and b else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU is fine)")
    ap.add_argument("--layers", default="Mamba1,Mamba2")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    sizes = SMOKE if args.smoke else FULL
    device = bench_device(args.smoke)
    if device is None:
        return 2
    info = env_info(device, packages=("mamba_ssm", "causal_conv1d"), smoke=args.smoke,
                    warmup_ms=WARMUP_MS, rep_ms=REP_MS, profile_steps=PROFILE_STEPS)
    print_record(info)
    results = [run_case(layer, sizes, device) for layer in args.layers.split(",")]
    head = ("layer", "ours wall ms", "mamba_ssm wall ms", "wall ratio", "ours kernel ms",
            "mamba_ssm kernel ms", "kernel ratio", "ours peak GiB", "mamba_ssm peak GiB",
            "loss ours / theirs", "max grad rel err")
    table = []
    for r in results:
        errs = [v for k, v in r.items() if k.startswith("grad_err")]
        table.append([r["layer"], fmt(r.get("ours_wall_ms"), ".1f"), fmt(r.get("mamba_ssm_wall_ms"), ".1f"),
                      fmt(ratio(r, "wall_ms"), ".2f"), fmt(r.get("ours_kernel_ms"), ".1f"),
                      fmt(r.get("mamba_ssm_kernel_ms"), ".1f"), fmt(ratio(r, "kernel_ms"), ".2f"),
                      fmt(r.get("ours_peak_gib"), ".2f"), fmt(r.get("mamba_ssm_peak_gib"), ".2f"),
                      f"{fmt(r.get('loss_ours'), '.4f')} / {fmt(r.get('loss_mamba_ssm'), '.4f')}",
                      fmt(max(errs) if errs else None, ".1e")])
    write_results(args.out, "gpu_lm_step", info, results, table=(head, table), sizes=sizes)
    print("\n" + markdown_table(head, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
