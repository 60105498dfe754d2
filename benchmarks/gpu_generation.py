"""Generation throughput, Mamba against a Transformer of the same size (issue 16; the Mamba
paper's inference claim: ~5x the Transformer's tokens/s at large batch).

Models (fp16 on CUDA, float32 on the CPU; random init; greedy decoding; tied embeddings,
RMSNorm; vocab 50277 padded to 50280):

* ``Mamba1`` / ``Mamba2``: our MambaLM, 24 layers, d_model 768 (Mamba-1: d_state 16,
  expand 2, the paper's 130M; Mamba-2: headdim 64, d_state 128), each run eager and with
  ``cuda_graph=True`` (``Mamba1+graph``, ``Mamba2+graph``; CUDA only). SSM states in
  float32 (the library's default; ``--state-dtype float16`` is what ``mamba_ssm`` keeps).
* ``Transformer``: our MambaLM with every layer attention (``attn_layer_idx`` = all, as a
  sweep's ``attention`` baseline builds it): same width and depth, 12 heads of 64, full
  rotary, no biases, and a gated MLP (``d_intermediate``) whose width is chosen so that the
  parameter count matches Mamba-1's (attention alone has 4 d^2 per layer, Mamba-1 about
  6.4 d^2; at the full sizes the width is 616: 129.3M parameters against Mamba-1's 129.1M
  and Mamba-2's 129.0M). Eager only: our CUDA graphs refuse attention layers (models/cuda_graph.py says
  why), so the like-for-like ratio is Mamba eager / Transformer, and Mamba+graph /
  Transformer is what a user of each gets. Its decode step is the library's MHA step
  (KV cache, SDPA over the cached keys, plus its non-finite guard over the cache).
* ``HF``: ``transformers``' LlamaForCausalLM with SDPA, the same network as ``Transformer``
  (same sizes, SwiGLU MLP of the same width, rotary, tied embeddings), its own
  ``generate`` (DynamicCache, eager): an outside Transformer, skipped when not importable.

Each (prompt length, model, batch) row: prompts of 2048 and 128 random tokens, 256 new
tokens, batch 1, 8, 32, 64, 128 (a case that runs out of memory is recorded as OOM, and
larger batches of that model and prompt are skipped; any other failure is recorded with
its error and the run goes on). Measured:

* generate: the library's whole ``generate`` call (prefill, then the decode loop);
  tokens/s = batch * 256 / s (the paper's throughput);
* prefill: a fresh cache and the parallel forward of the prompt, as generate does;
* decode: the rest of generate from a prefilled cache -- restore the prefilled state
  (SSM states copied back, or the graph's ``load``; KV caches rewound to the prompt's end,
  their later slots are overwritten), then 255 steps sampling 256 tokens; tokens/s =
  batch * 255 / s (steps). The decode's tokens are checked to equal generate's
  (``tokens_equal``).

Wall time: median of ``--repeats`` calls after one warm-up (harness.median_s; compiles,
graph capture and autotuning stay in the warm-up); a call over ``--long-s`` seconds is
timed once. Kernel time (CUDA): one more profiled call, the GPU time of every kernel
summed (harness.device_time_totals, as harness.kernel_ms does, without kernel_ms's extra
warm-up call), host work (Python, launches) left out; the gap between the two is what
CUDA graphs remove. Peak memory: ``max_memory_allocated`` over one generate call (weights
included). Ratios: a row's tokens/s over the Transformer's (``xT``) and over HF's
(``xHF``) at the same prompt and batch. Every model gets the same random prompt at a
(prompt length, batch); parameter counts are in the JSON's ``info.params``.

Usage (on the device):  python benchmarks/gpu_generation.py [--prompts 2048,128]
                        [--models Mamba1,Mamba2,Transformer,HF] [--batches 1,8,32,64,128]
                        [--repeats 3] [--no-kernel] [--out DIR]
                        benchmarks/device/issue16_generation.sh generation   (both prompts)
Smoke check (CPU, seconds): python benchmarks/gpu_generation.py --device cpu --tiny
Writes DIR/gpu_generation.json (every number, rewritten after each case) and
DIR/gpu_generation.md (the table), see benchmarks/harness.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch

from harness import device_time_totals, env_info, fmt, markdown_table, median_s, print_record, write_results
from mimetic import MambaConfig, MambaLM
from mimetic.models.cache import SSMState
from mimetic.models.cuda_graph import decode_graph
from mimetic.models.generation import sample_next

FULL = dict(d_model=768, n_layer=24, vocab_size=50277, num_heads=12, prompts=(2048, 128),
            new=256, batches=(1, 8, 32, 64, 128))
TINY = dict(d_model=32, n_layer=2, vocab_size=200, num_heads=2, prompts=(12, 4), new=5,
            batches=(1, 3))
MODELS = ("Mamba1", "Mamba2", "Transformer", "HF")


# ------------------------------------------------------------------- models


def mamba_config(sizes, layer: str) -> MambaConfig:
    return MambaConfig(d_model=sizes["d_model"], n_layer=sizes["n_layer"],
                       vocab_size=sizes["vocab_size"], ssm_cfg={"layer": layer})


def transformer_config(sizes, d_intermediate: int) -> MambaConfig:
    head_dim = sizes["d_model"] // sizes["num_heads"]
    attn = dict(num_heads=sizes["num_heads"], rotary_emb_dim=head_dim, qkv_proj_bias=False,
                out_proj_bias=False)
    return MambaConfig(d_model=sizes["d_model"], n_layer=sizes["n_layer"],
                       vocab_size=sizes["vocab_size"], d_intermediate=d_intermediate,
                       attn_layer_idx=list(range(sizes["n_layer"])), attn_cfg=attn)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


def per_layer_params(make) -> int:
    """Parameters one layer adds: ``make(n_layer)`` -> MambaConfig, built with 2 and 1
    layers and a vocabulary of 8 (small and quick on the CPU; meta tensors fail the init)."""
    sizes = [n_params(MambaLM(dataclasses.replace(make(k), vocab_size=8))) for k in (2, 1)]
    return sizes[0] - sizes[1]


def matched_mlp_width(sizes) -> int:
    """The gated MLP width (a multiple of 8) that brings the all-attention model's layer
    closest to a Mamba-1 layer in parameters: each unit of width adds 3 * d_model weights.
    Embedding and final norm are the same in both models."""
    def shape(k, **kw):
        return dict(sizes, n_layer=k, **kw)

    target = per_layer_params(lambda k: mamba_config(shape(k), "Mamba1"))
    bare = per_layer_params(lambda k: transformer_config(shape(k), 8)) - 3 * sizes["d_model"] * 8
    return max(8, round((target - bare) / (3 * sizes["d_model"]) / 8) * 8)


def hf_llama(sizes, d_intermediate: int, max_len: int, device, dtype):
    """transformers' Llama of the Transformer's sizes with SDPA, or (None, why)."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except Exception as e:  # noqa: BLE001
        return None, f"import failed: {e!r}"
    padded = mamba_config(sizes, "Mamba1").padded_vocab_size
    cfg = LlamaConfig(hidden_size=sizes["d_model"], intermediate_size=d_intermediate,
                      num_hidden_layers=sizes["n_layer"], num_attention_heads=sizes["num_heads"],
                      num_key_value_heads=sizes["num_heads"], vocab_size=padded,
                      max_position_embeddings=max_len, rms_norm_eps=1e-5, attention_bias=False,
                      tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
                      pad_token_id=None)
    torch.manual_seed(0)
    try:
        with torch.device(device):
            model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")
    except Exception as e:  # noqa: BLE001
        return None, f"construction failed: {e!r}"
    return model.to(dtype).eval(), f"transformers LlamaForCausalLM, {model.config._attn_implementation}"


# ------------------------------------------------------------------- the three calls


class OursCalls:
    """generate / prefill / decode of a MambaLM on one prompt (batch, L), n new tokens."""

    def __init__(self, model, prompt, n, graph: bool, state_dtype):
        self.model, self.prompt, self.n, self.graph, self.state_dtype = model, prompt, n, graph, state_dtype

    def generate(self) -> torch.Tensor:
        """(batch, L + n) token ids: the library's generate."""
        return self.model.generate(self.prompt, self.n, cuda_graph=self.graph,
                                   state_dtype=self.state_dtype)

    def prefill(self):
        """(cache, last logits (batch, vocab)), as generate starts."""
        batch, L = self.prompt.shape
        cache = self.model.allocate_cache(batch, L + self.n, state_dtype=self.state_dtype)
        return cache, self.model(self.prompt, cache=cache, num_last_tokens=1)[:, -1]

    def decoder(self, prefilled):
        """A no-argument call that decodes n tokens (batch, n) from ``prefilled`` (from
        :meth:`prefill`) as generate's loop does, and can be called again: it restores the
        prefilled state first (the graph's ``load`` copies it into the graph's own cache;
        eager, the SSM states are copied back from a snapshot and the offsets rewound, so
        attention overwrites the same KV slots)."""
        cache, logits = prefilled
        L = cache.seqlen_offset
        saved = [(s.conv_state.clone(), s.ssm_state.clone()) if isinstance(s, SSMState) else None
                 for s in cache.layers]

        def restore():
            for s, snap in zip(cache.layers, saved):
                if snap is not None:
                    s.conv_state.copy_(snap[0])
                    s.ssm_state.copy_(snap[1])
            cache.seqlen_offset = 0
            cache.advance(L)

        def decode():
            if self.graph:
                step = decode_graph(self.model, cache.batch_size, state_dtype=self.state_dtype)
                step.load(cache)
            else:
                restore()
                step = lambda ids: self.model.step(ids, cache)  # noqa: E731
            return greedy_loop(step, logits, self.n)

        return decode


class HFCalls:
    """The same three calls for a transformers causal LM (DynamicCache)."""

    def __init__(self, model, prompt, n):
        import inspect

        self.model, self.prompt, self.n = model, prompt, n
        # transformers renamed forward's past_key_values to cache (the device's may be older)
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def generate(self) -> torch.Tensor:
        return self.model.generate(self.prompt, attention_mask=torch.ones_like(self.prompt),
                                   max_new_tokens=self.n, min_new_tokens=self.n, do_sample=False)

    def prefill(self):
        out = self.model(input_ids=self.prompt, use_cache=True, logits_to_keep=1)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        return cache, out.logits[:, -1]

    def decoder(self, prefilled):
        cache, logits = prefilled
        L = self.prompt.shape[1]

        def step(ids):
            return self.model(input_ids=ids, use_cache=True, **{self.cache_arg: cache}).logits

        def decode():
            extra = cache.get_seq_length() - L
            if extra:
                cache.crop(-extra)  # drop the last call's tokens (negative: how many to remove)
            return greedy_loop(step, logits, self.n)

        return decode


def greedy_loop(step, logits, n) -> torch.Tensor:
    """n greedy tokens (batch, n) from the prefill's last logits (batch, vocab) and n - 1
    calls of ``step``: ids (batch, 1) -> logits (batch, 1, vocab), as generate's loop."""
    tokens = []
    for i in range(n):
        token = sample_next(logits, top_k=1)
        tokens.append(token)
        if i == n - 1:
            break
        logits = step(token[:, None])[:, -1]
    return torch.stack(tokens, dim=1)


# ------------------------------------------------------------------- measuring


def timed(fn, device, args, warmup: int = 1):
    """(median seconds, last output) of fn after ``warmup`` untimed calls: ``--repeats``
    timed calls, or one when the first takes over ``--long-s`` seconds (a generate of a
    Transformer at batch 128 takes seconds; its spread is small)."""
    secs, out = median_s(fn, 1, device, warmup=warmup)
    if args.repeats == 1 or secs > args.long_s:
        return secs, out
    del out
    return median_s(fn, args.repeats, device, warmup=0)


def profiled_ms(fn):
    """(GPU kernel ms of one call of an already warm fn, its output): harness.kernel_ms
    without its warm-up call, which costs a whole generate here."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = fn()
        torch.cuda.synchronize()
    return device_time_totals(prof)["kernel_ms"], out


def measure(calls, batch, n, device, args) -> dict:
    """The row's numbers for one model, prompt and batch (see the module docstring)."""
    cuda = device.type == "cuda"
    rec = {}
    secs, generated = timed(calls.generate, device, args)
    rec.update(generate_s=secs, generate_tok_s=batch * n / secs)
    if cuda:  # one more call: its peak memory (and kernel time)
        del generated
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        if args.kernel:
            ms, generated = profiled_ms(calls.generate)
            rec.update(generate_kernel_ms=ms, generate_kernel_tok_s=batch * n / ms * 1e3)
        else:
            generated = calls.generate()
            torch.cuda.synchronize()
        rec["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    secs, prefilled = timed(calls.prefill, device, args)
    rec["prefill_s"] = secs
    if cuda and args.kernel:
        rec["prefill_kernel_ms"], prefilled = profiled_ms(calls.prefill)
    decode = calls.decoder(prefilled)
    tokens = decode()  # also the decode's warm-up
    L = generated.shape[1] - n
    rec["tokens_equal"] = bool(torch.equal(tokens, generated[:, L:]))
    del generated, tokens
    secs, _ = timed(decode, device, args, warmup=0)
    rec.update(decode_s=secs, decode_tok_s=batch * (n - 1) / secs)
    if cuda and args.kernel:
        ms, _ = profiled_ms(decode)
        rec.update(decode_kernel_ms=ms, decode_kernel_tok_s=batch * (n - 1) / ms * 1e3)
    return rec


def build(name, sizes, d_mlp, max_len, device, dtype):
    """(model, how it was built) for a name of MODELS; model None when it cannot be built."""
    if name == "HF":
        return hf_llama(sizes, d_mlp, max_len, device, dtype)
    config = (transformer_config(sizes, d_mlp) if name == "Transformer"
              else mamba_config(sizes, name))
    torch.manual_seed(0)
    return MambaLM(config, device=device, dtype=dtype).eval(), "mimetic MambaLM"


def run(args, sizes, device, dtype, state_dtype, info, out_name):
    """Every case, prompt by prompt and batch by batch, every model at each (so a run cut
    off keeps whole batches to compare); results rewritten to the JSON after each case."""
    results = []
    d_mlp = matched_mlp_width(sizes)
    info["transformer_d_intermediate"] = d_mlp
    n = sizes["new"]
    models = {}
    for name in args.models:
        model, note = build(name, sizes, d_mlp, max(sizes["prompts"]) + n, device, dtype)
        info.setdefault("models", {})[name] = note
        if model is None:
            print(f"{name}: {note}", file=sys.stderr)
            continue
        info.setdefault("params", {})[name] = n_params(model)
        models[name] = model
    runs = [(name, graph) for name in models
            for graph in ((False, True) if name.startswith("Mamba") and device.type == "cuda" else (False,))]
    for L in sizes["prompts"]:
        oom_at = {}  # label -> the batch that ran out of memory at this prompt length
        for batch in sizes["batches"]:
            g = torch.Generator().manual_seed(batch * 7919 + L)
            prompt = torch.randint(0, sizes["vocab_size"], (batch, L), generator=g).to(device)
            for name, graph in runs:
                label = name + ("+graph" if graph else "")
                rec = dict(model=label, prompt=L, batch=batch, new_tokens=n, dtype=str(dtype))
                if label in oom_at:
                    rec.update(oom=True, skipped=f"OOM at batch {oom_at[label]}")
                else:
                    model = models[name]
                    calls = (HFCalls(model, prompt, n) if name == "HF"
                             else OursCalls(model, prompt, n, graph, state_dtype))
                    try:
                        with torch.inference_mode():
                            rec.update(measure(calls, batch, n, device, args))
                    except Exception as e:  # noqa: BLE001 -- one failed case keeps the others
                        if isinstance(e, torch.OutOfMemoryError):
                            oom_at[label] = batch
                            rec["oom"] = True
                        rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                        print(rec["error"], file=sys.stderr)
                    del calls
                print_record(rec)
                results.append(rec)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                write_results(args.out, out_name, info, results, sizes=sizes)
    return results


# ------------------------------------------------------------------- table


def add_ratios(results) -> None:
    """xT / xHF: a row's tokens/s over the Transformer's / HF's at its prompt and batch."""
    ref = {(r["model"], r["prompt"], r["batch"]): r for r in results
           if not r.get("oom") and not r.get("error")}
    for r in results:
        for tag, other in (("xT", "Transformer"), ("xHF", "HF")):
            o = ref.get((other, r["prompt"], r["batch"]))
            for key in ("generate_tok_s", "decode_tok_s", "decode_kernel_tok_s"):
                if o and r.get(key) and o.get(key):
                    r[f"{key}_{tag}"] = r[key] / o[key]


def table(results):
    head = ("prompt", "model", "batch", "generate tok/s", "decode tok/s", "prefill ms",
            "decode kernel tok/s", "peak GiB", "generate xT", "decode xT", "generate xHF",
            "decode xHF", "tokens = generate's")
    rows = []
    for r in results:
        if r.get("oom") or r.get("error"):
            what = "OOM" if r.get("oom") else "error"
            rows.append([r["prompt"], r["model"], r["batch"], what] + ["-"] * (len(head) - 4))
            continue
        g = r.get
        rows.append([r["prompt"], r["model"], r["batch"], fmt(g("generate_tok_s")),
                     fmt(g("decode_tok_s")), fmt(g("prefill_s") * 1e3, ".1f"),
                     fmt(g("decode_kernel_tok_s")), fmt(g("peak_gib"), ".2f"),
                     fmt(g("generate_tok_s_xT"), ".2f"), fmt(g("decode_tok_s_xT"), ".2f"),
                     fmt(g("generate_tok_s_xHF"), ".2f"), fmt(g("decode_tok_s_xHF"), ".2f"),
                     str(g("tokens_equal"))])
    return head, rows


def int_list(text):
    return tuple(int(x) for x in text.split(","))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny models and prompts (CPU smoke check)")
    ap.add_argument("--models", default=",".join(MODELS), help=f"some of {','.join(MODELS)}")
    ap.add_argument("--prompts", type=int_list, help="prompt lengths (default 2048,128)")
    ap.add_argument("--batches", type=int_list, help="batch sizes (default 1,8,32,64,128)")
    ap.add_argument("--new", type=int, help="new tokens (default 256)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long-s", type=float, default=2.0,
                    help="a call that takes longer is timed once (after its warm-up)")
    ap.add_argument("--no-kernel", dest="kernel", action="store_false",
                    help="skip the profiled kernel times (CUDA)")
    ap.add_argument("--state-dtype", default="float32", choices=("float32", "float16"))
    ap.add_argument("--name", default="gpu_generation", help="result file name (no suffix)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args(argv)
    args.models = args.models.split(",")
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        ap.error(f"unknown models {bad}; known: {list(MODELS)}")
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (use --device cpu --tiny)")
    if device.type != "cuda" and not args.tiny:
        ap.error("the full sizes are for a GPU: on the CPU add --tiny")
    sizes = dict(TINY if args.tiny else FULL)
    for key in ("prompts", "batches", "new"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    if sizes["new"] < 2 or min(sizes["prompts"]) < 1 or min(sizes["batches"]) < 1:
        ap.error("need --new >= 2 and positive prompt lengths and batch sizes")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    state_dtype = getattr(torch, args.state_dtype)
    info = env_info(device, packages=("transformers",), tiny=args.tiny, repeats=args.repeats,
                    state_dtype=args.state_dtype, kernel_times=args.kernel and device.type == "cuda")
    print_record(info)
    results = run(args, sizes, device, dtype, state_dtype, info, args.name)
    add_ratios(results)
    head, rows = table(results)
    write_results(args.out, args.name, info, results, table=(head, rows), sizes=sizes)
    print("\n" + markdown_table(head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
