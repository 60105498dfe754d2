"""GPU decoding benchmark: tokens per second of greedy generation, ours with and without
CUDA graphs, side by side with ``mamba_ssm``'s ``generate(cg=True)`` when importable.

What is compared: one language model of 24 layers, d_model 768, vocab 50277 (padded to a
multiple of 8, tied embeddings, RMSNorm, residual in fp32: ``mamba_ssm``'s MambaConfig
defaults), Mamba-1 (d_state 16, expand 2) or Mamba-2 (headdim 64, d_state 128, expand 2,
ngroups 1), fp16 weights, random init (ours; ``mamba_ssm``'s model is built from the same
MambaConfig fields and loads our weights, so both run the same network). Each run
generates 256 new tokens greedily after a random 16-token prompt, for batch 1 and 64.
Time: the whole generate call (prefill of the prompt + 256 decode steps), wall clock
between CUDA synchronizations, median of ``--repeats`` runs after one warm-up run (which
compiles the kernels and captures the graphs; later calls reuse them, for both libraries).
tokens/s = batch * new tokens / seconds. Ours runs twice with graphs: SSM states in
float32 (our default) and in fp16 (``state_dtype``; what ``mamba_ssm`` keeps while
decoding an fp16 model). ``--profile`` adds kernels and GPU time per token of 32-token
generate calls, for both libraries. Also checked: ours with and without graphs give
the same tokens; agreement with ``mamba_ssm``'s tokens is reported (fp16 kernels differ,
so on a random model greedy paths may part after a few tokens; not a failure).

Usage (on the device):  python benchmarks/gpu_decode.py [--repeats 3] [--out DIR]
                        python benchmarks/gpu_decode.py --smoke   (tiny, CPU is fine)
Prints a table last; writes every number as JSON to DIR/gpu_decode.json and the table to
DIR/gpu_decode.md (benchmarks/harness.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch

from harness import bench_device, env_info, fmt, markdown_table, median_s, print_record, write_results
from mimetic import MambaConfig, MambaLM

FULL = dict(d_model=768, n_layer=24, vocab_size=50277, prompt=16, new=256, batches=(1, 64))
SMOKE = dict(d_model=64, n_layer=2, vocab_size=1000, prompt=4, new=8, batches=(1, 3))


def timed(fn, device, repeats):
    """(median seconds over ``repeats`` calls after one warm-up call, last output)."""
    return median_s(fn, repeats, device, warmup=1)


def first_mismatch(a, b, start):
    """Index (in new tokens) of the first position where a and b differ, None if equal."""
    if a.shape != b.shape:
        return 0
    diff = (a[:, start:] != b[:, start:]).any(0).nonzero()
    return int(diff[0]) if len(diff) else None


def mamba_ssm_model(config, ours, device, dtype):
    """``mamba_ssm``'s MambaLMHeadModel with our config's fields and our weights, or
    (None, why) when it cannot be built."""
    try:
        from mamba_ssm.models.config_mamba import MambaConfig as TheirConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    except Exception as e:  # noqa: BLE001
        return None, f"import failed: {e!r}"
    ours_d = config.to_dict()
    cfg = TheirConfig(**{f.name: ours_d[f.name] for f in dataclasses.fields(TheirConfig)
                         if f.name in ours_d})
    try:
        model = MambaLMHeadModel(cfg, device=device, dtype=dtype).eval()
    except Exception as e:  # noqa: BLE001
        return None, f"construction failed: {e!r}"
    try:
        model.load_state_dict(ours.state_dict())
        note = "our weights"
    except Exception as e:  # noqa: BLE001
        note = f"own random init (loading ours failed: {e!r})"
    return model, note


def run_case(layer, batch, sizes, args, device, dtype):
    ssm = {"layer": layer}  # defaults: Mamba-1 d_state 16; Mamba-2 headdim 64, d_state 128
    config = MambaConfig(d_model=sizes["d_model"], n_layer=sizes["n_layer"],
                         vocab_size=sizes["vocab_size"], ssm_cfg=ssm)
    torch.manual_seed(0)
    model = MambaLM(config, device=device, dtype=dtype).eval()
    g = torch.Generator().manual_seed(batch)
    prompt = torch.randint(0, config.vocab_size, (batch, sizes["prompt"]), generator=g).to(device)
    L, n = sizes["prompt"], sizes["new"]
    rec = dict(layer=layer, batch=batch, prompt=L, new_tokens=n, d_model=config.d_model,
               n_layer=config.n_layer, vocab_size=config.vocab_size, dtype=str(dtype))
    tok = batch * n
    secs, plain = timed(lambda: model.generate(prompt, n), device, args.repeats)
    rec.update(ours_eager_s=secs, ours_eager_tok_s=tok / secs)
    assert plain.shape == (batch, L + n), plain.shape
    if device.type == "cuda":
        secs, graphed = timed(lambda: model.generate(prompt, n, cuda_graph=True), device,
                              args.repeats)
        rec.update(ours_graph_s=secs, ours_graph_tok_s=tok / secs,
                   graph_tokens_equal=bool(torch.equal(graphed, plain)),
                   graph_first_mismatch=first_mismatch(graphed, plain, L))
        # SSM states in fp16 while decoding, as mamba_ssm keeps them (half the bytes).
        half = lambda: model.generate(prompt, n, cuda_graph=True, state_dtype=dtype)  # noqa: E731
        secs, graphed16 = timed(half, device, args.repeats)
        rec.update(ours_graph16_s=secs, ours_graph16_tok_s=tok / secs,
                   graph16_first_mismatch=first_mismatch(graphed16, plain, L))
        if args.profile:
            rec["profile_ours"] = profile_generate(
                lambda: model.generate(prompt, 32, cuda_graph=True), 32)
            rec["profile_ours16"] = profile_generate(
                lambda: model.generate(prompt, 32, cuda_graph=True, state_dtype=dtype), 32)
        theirs, note = mamba_ssm_model(config, model, device, dtype)
        rec["mamba_ssm_model"] = note
        if theirs is not None:
            def gen():
                out = theirs.generate(input_ids=prompt, max_length=L + n, cg=True, top_k=1,
                                      vocab_size=config.vocab_size)
                return out.sequences if hasattr(out, "sequences") else out

            secs, seqs = timed(gen, device, args.repeats)
            if args.profile:
                rec["profile_mamba"] = profile_generate(
                    lambda: theirs.generate(input_ids=prompt, max_length=L + 32, cg=True,
                                            top_k=1, vocab_size=config.vocab_size), 32)
            new = seqs.shape[1] - L
            rec.update(mamba_cg_s=secs, mamba_cg_new_tokens=new,
                       mamba_cg_tok_s=batch * new / secs,
                       mamba_first_mismatch=first_mismatch(seqs, plain, L))
    print_record(rec)
    return rec


def profile_generate(fn, new_tokens, top=12):
    """Kernels of one generate call of ``new_tokens`` tokens (after a warm-up call), from
    torch.profiler: kernels and GPU milliseconds per token, and the ``top`` kernels by
    time (name, calls per token, microseconds per token)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [(e.key, e.count, e.self_device_time_total) for e in prof.key_averages()
            if e.self_device_time_total > 0]
    rows.sort(key=lambda r: -r[2])
    return dict(kernels_per_token=sum(r[1] for r in rows) / new_tokens,
                gpu_ms_per_token=sum(r[2] for r in rows) / new_tokens / 1e3,
                top=[(k[:90], c / new_tokens, t / new_tokens) for k, c, t in rows[:top]])


def mismatch(r):
    if "mamba_first_mismatch" not in r:
        return "-"
    at = r["mamba_first_mismatch"]
    return "all same" if at is None else f"token {at}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny model, few tokens (CPU is fine)")
    ap.add_argument("--layers", default="Mamba1,Mamba2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true",
                    help="also profile 32-token generate calls (kernels and GPU time per token)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    sizes = SMOKE if args.smoke else FULL
    device = bench_device(args.smoke)
    if device is None:
        return 2
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    # causal_conv1d: mamba_ssm's Mamba-1 step uses it when present (build-on-device.sh --with-conv)
    info = env_info(device, packages=("mamba_ssm", "causal_conv1d"), smoke=args.smoke,
                    repeats=args.repeats)
    print_record(info)
    results = []
    for layer in args.layers.split(","):
        for batch in sizes["batches"]:
            results.append(run_case(layer, batch, sizes, args, device, dtype))
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the case's models and graphs are gone
    for r in results:
        for who in ("ours", "ours16", "mamba"):
            p = r.get(f"profile_{who}")
            if p:
                print(f"{r['layer']} batch {r['batch']} {who}: {p['kernels_per_token']:.0f} "
                      f"kernels/token, {p['gpu_ms_per_token']:.3f} GPU ms/token; top: "
                      + "; ".join(f"{k[:40]} x{c:.0f} {t:.0f}us" for k, c, t in p["top"][:6]))
    head = ("layer", "batch", "ours tok/s", "ours+graph tok/s", "ours+graph fp16 state tok/s",
            "mamba_ssm cg tok/s", "graph / mamba", "graph fp16 state / mamba",
            "graph == eager tokens", "vs mamba: first diff")
    table = []
    for r in results:
        ratio = lambda k: (r[k] / r["mamba_cg_tok_s"]  # noqa: E731
                           if k in r and "mamba_cg_tok_s" in r else None)
        table.append([r["layer"], str(r["batch"]), fmt(r["ours_eager_tok_s"]),
                      fmt(r.get("ours_graph_tok_s")), fmt(r.get("ours_graph16_tok_s")),
                      fmt(r.get("mamba_cg_tok_s")), fmt(ratio("ours_graph_tok_s"), ".2f"),
                      fmt(ratio("ours_graph16_tok_s"), ".2f"),
                      str(r.get("graph_tokens_equal", "-")), mismatch(r)])
    write_results(args.out, "gpu_decode", info, results, table=(head, table), sizes=sizes)
    print("\n" + markdown_table(head, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
