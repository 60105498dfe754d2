"""CPU training-step benchmark: mimetic's Mamba-1 / Mamba-2 against mambapy and transformers.

One training step = forward + cross-entropy loss + backward (no optimizer), of a 2-layer
language model, d_model 128, batch 16, length 256, vocab 256:

* Mamba-1 (d_state 16): ours vs ``mambapy`` (parallel scan) and ``transformers``
  ``MambaForCausalLM`` (its torch path: a sequential loop, ~40 s a step on 2 cores;
  ``--skip-slow`` leaves it out).
* Mamba-2 (d_state 64, headdim 64, one group, chunk 256 or ``--chunk-size``): ours vs
  ``transformers`` ``Mamba2ForCausalLM`` (its torch chunked path).

Each time is the median of ``--reps`` steps after ``--warmup`` untimed ones; the models
take turns (one step each per round) so that load changes on a shared machine affect
all rows alike. The load average is printed beside every row.

    python benchmarks/cpu.py [--skip-slow] [--reps 5] [--warmup 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import statistics
import warnings

import torch
import torch.nn.functional as F

from harness import env_info, markdown_table, seconds, write_json

SHAPE = dict(n_layer=2, d_model=128, batch=16, length=256, vocab=256)
MAMBA1_D_STATE, MAMBA2_D_STATE, MAMBA2_HEADDIM = 16, 64, 64
# Chunk length of both Mamba-2 implementations (--chunk-size); 256 is both libraries' default.
MAMBA2 = {"chunk_size": 256}


def ours_mamba1():
    from mimetic import MambaConfig, MambaLM

    return MambaLM(MambaConfig(d_model=SHAPE["d_model"], n_layer=SHAPE["n_layer"],
                               vocab_size=SHAPE["vocab"],
                               ssm_cfg={"layer": "Mamba1", "d_state": MAMBA1_D_STATE}))


def ours_mamba2():
    from mimetic import MambaConfig, MambaLM

    return MambaLM(MambaConfig(d_model=SHAPE["d_model"], n_layer=SHAPE["n_layer"],
                               vocab_size=SHAPE["vocab"],
                               ssm_cfg={"layer": "Mamba2", "d_state": MAMBA2_D_STATE,
                                        "headdim": MAMBA2_HEADDIM, "ngroups": 1,
                                        "chunk_size": MAMBA2["chunk_size"]}))


def mambapy_mamba1():
    # mambapy.lm.LM imports mamba_ssm (for its Mamba-2) at import time, so assemble the same
    # LM (embedding -> mambapy's Mamba blocks -> RMSNorm -> head) from its Mamba-1 parts.
    from mambapy.mamba import Mamba, MambaConfig, RMSNorm
    from torch import nn

    cfg = MambaConfig(d_model=SHAPE["d_model"], n_layers=SHAPE["n_layer"], d_state=MAMBA1_D_STATE,
                      pscan=True)
    return nn.Sequential(nn.Embedding(SHAPE["vocab"], cfg.d_model), Mamba(cfg),
                         RMSNorm(cfg.d_model, cfg.rms_norm_eps),
                         nn.Linear(cfg.d_model, SHAPE["vocab"], bias=False))


def transformers_mamba1():
    import transformers

    cfg = transformers.MambaConfig(vocab_size=SHAPE["vocab"], hidden_size=SHAPE["d_model"],
                                   num_hidden_layers=SHAPE["n_layer"], state_size=MAMBA1_D_STATE,
                                   use_mambapy=False)
    return transformers.MambaForCausalLM(cfg)


def transformers_mamba2():
    import transformers

    d_inner = 2 * SHAPE["d_model"]
    cfg = transformers.Mamba2Config(vocab_size=SHAPE["vocab"], hidden_size=SHAPE["d_model"],
                                    num_hidden_layers=SHAPE["n_layer"], state_size=MAMBA2_D_STATE,
                                    head_dim=MAMBA2_HEADDIM, num_heads=d_inner // MAMBA2_HEADDIM,
                                    n_groups=1, chunk_size=MAMBA2["chunk_size"])
    return transformers.Mamba2ForCausalLM(cfg)


def logits_of(model, ids):
    out = model(ids)
    # transformers returns a ModelOutput; ours and mambapy return the logits tensor.
    return out.logits if hasattr(out, "logits") else out


def train_step(model, ids):
    """Forward, next-token cross entropy, backward. ids: (batch, length)."""
    logits = logits_of(model, ids)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                           ids[:, 1:].reshape(-1))
    loss.backward()
    for p in model.parameters():
        p.grad = None
    return loss.item()


def measure_interleaved(models: dict, slow: set, ids, warmup: int, reps: int,
                        slow_reps: int) -> dict:
    """Time every model once per round, ``reps`` rounds, so that a load change on this
    shared machine hits all rows alike and the ratios stay fair. Slow models run in the
    first ``slow_reps`` rounds only, without warm-up (first-call overhead is negligible
    next to their ~40 s)."""
    for name, model in models.items():
        for _ in range(0 if name in slow else warmup):
            train_step(model, ids)
    times = {name: [] for name in models}
    loads = {name: [] for name in models}
    for r in range(reps):
        for name, model in models.items():
            if name in slow and r >= slow_reps:
                continue
            loads[name].append(os.getloadavg()[0])
            times[name].append(seconds(lambda: train_step(model, ids))[0])
            print(f"  round {r}: {name} {times[name][-1]:.3f} s (load {loads[name][-1]:.2f})",
                  flush=True)
    return {name: dict(median_s=statistics.median(times[name]), times_s=times[name],
                       load1_min=min(loads[name]), load1_max=max(loads[name]))
            for name in models}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-slow", action="store_true",
                    help="skip transformers' sequential Mamba-1 path (~40 s a step)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--slow-reps", type=int, default=2, help="reps for transformers Mamba-1")
    ap.add_argument("--only", nargs="*", help="run only these rows (by name)")
    ap.add_argument("--chunk-size", type=int, default=256, help="Mamba-2 chunk length (both)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    MAMBA2["chunk_size"] = args.chunk_size
    warnings.filterwarnings("ignore")
    try:  # transformers warns loudly on every call that the CUDA kernels are absent
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass

    ids = torch.randint(0, SHAPE["vocab"], (SHAPE["batch"], SHAPE["length"]),
                        generator=torch.Generator().manual_seed(0))
    rows = [  # (name, builder, baseline row it is compared with, slow)
        ("mimetic Mamba-1", ours_mamba1, None, False),
        ("mambapy Mamba-1", mambapy_mamba1, "mimetic Mamba-1", False),
        ("transformers Mamba-1", transformers_mamba1, "mimetic Mamba-1", True),
        ("mimetic Mamba-2", ours_mamba2, None, False),
        ("transformers Mamba-2", transformers_mamba2, "mimetic Mamba-2", False),
    ]
    info = env_info("cpu", packages=("mimetic", "transformers", "mambapy"))
    print(f"shape {SHAPE}; Mamba-1 d_state {MAMBA1_D_STATE}; Mamba-2 d_state {MAMBA2_D_STATE}, "
          f"headdim {MAMBA2_HEADDIM}, chunk {MAMBA2['chunk_size']}")
    print("versions:", ", ".join(f"{k} {v}" for k, v in info.items()))
    models, slow = {}, set()
    for name, build, _, is_slow in rows:
        if (args.only and name not in args.only) or (is_slow and args.skip_slow):
            continue
        try:
            torch.manual_seed(0)
            models[name] = build().train()
        except ImportError as e:
            print(f"{name}: skipped ({e})")
            continue
        if is_slow:
            slow.add(name)
    results = measure_interleaved(models, slow, ids, args.warmup, args.reps, args.slow_reps)

    table = []
    for name, _, base, _ in rows:
        if name not in results:
            continue
        r = results[name]
        ratio = ""
        if base in results:
            ratio = f"{r['median_s'] / results[base]['median_s']:.2f}x"
            r["ratio_vs_mimetic"] = r["median_s"] / results[base]["median_s"]
        table.append((name, f"{r['median_s']:.3f}", ratio, f"{r['load1_min']:.2f}-{r['load1_max']:.2f}"))
    print("\n" + markdown_table(("model", "fwd+bwd s (median)", "time / mimetic's", "load (1 min, min-max)"),
                                table))
    out = {"shape": SHAPE, "mamba2_chunk_size": MAMBA2["chunk_size"], "versions": info,
           "results": results}
    if args.json:
        write_json(args.json, out, indent=2)
    return out


if __name__ == "__main__":
    main()
