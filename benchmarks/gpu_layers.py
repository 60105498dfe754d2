"""Whole-layer benchmark: mimetic's Mamba / Mamba2 against mamba_ssm's, forward and
forward+backward, speed and peak memory.

For each layer (Mamba-1: d_state 16, d_conv 4, expand 2; Mamba-2: d_state 128, headdim 64,
expand 2, ngroups 1, chunk 256 -- mamba_ssm's defaults; --smoke too), shape
(batch x length x d_model) and precision, it builds mamba_ssm's layer (fast paths on:
``use_fast_path`` / ``use_mem_eff_path``) and ours with the same arguments, copies
mamba_ssm's weights into ours (``load_state_dict``: the parameter names are the same, as
the checkpoint loader assumes), then

1. checks ours against theirs: output and the input and parameter gradients of one
   forward+backward, relative error, flagged above 2e-2;
2. times forward (no grad), forward with grad (no backward) and forward+backward with
   ``triton.testing.do_bench`` (median, warmup 25 ms, rep 100 ms; every function is
   called a few times first, so Triton autotuning and torch.compile stay out of it);
3. measures the peak memory of one forward+backward above what was allocated before it
   (weights and input already there; parameter gradients are part of the peak);
4. does the same for ``torch.compile(ours)`` (failures are reported, not raised);
5. profiles a few forward+backward iterations of ours and theirs (torch.profiler, CPU and
   CUDA activities): prints the top kernels by CUDA time, writes the full tables.

Precisions: ``bf16`` (layers built with dtype=bf16; as in mamba_ssm, A_log and D stay fp32,
except that their Mamba2 has dt_bias and A_log in bf16 where ours keeps them in fp32,
holding the same values) and ``autocast`` (fp32 parameters and input under
``torch.autocast("cuda", bf16)``).

Usage (on the device, with mamba_ssm and causal_conv1d importable):
    python benchmarks/gpu_layers.py --out $OUT
    python benchmarks/gpu_layers.py --layers mamba2 --shapes 8x2048x768,2x8192x768
        --precision bf16 --no-compile --no-profile     (one command line)
Local check of the plumbing (CPU, tiny; "theirs" is then a second mimetic layer):
    python benchmarks/gpu_layers.py --smoke
Prints a table last; writes every number to DIR/gpu_layers.json, the table to
DIR/gpu_layers.md and the profiler tables to DIR/profile_*.txt (DIR: --out, else $OUT,
else a new temporary folder).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import os
import sys
import tempfile
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if importlib.util.find_spec("mimetic") is None:  # run from a checkout that is not installed
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

from harness import (  # noqa: E402
    env_info,
    markdown_table,
    package_version,
    print_record,
    rel_err,
    wall_ms,
    write_results,
)
from mimetic.modules import Mamba, Mamba2  # noqa: E402

TOL = 2e-2  # relative error above which a bf16 comparison is flagged

LAYERS = {
    "mamba1": dict(
        ours=Mamba, theirs=("mamba_ssm.modules.mamba_simple", "Mamba"),
        kwargs=dict(d_state=16, d_conv=4, expand=2, use_fast_path=True, layer_idx=0)),
    "mamba2": dict(
        ours=Mamba2, theirs=("mamba_ssm.modules.mamba2", "Mamba2"),
        kwargs=dict(d_state=128, d_conv=4, expand=2, headdim=64, ngroups=1, chunk_size=256,
                    use_mem_eff_path=True, layer_idx=0)),
}
# Modules of mamba_ssm whose fast paths need causal_conv1d, and the names they import it
# under (older releases: causal_conv1d_fn / causal_conv1d_cuda; newer: *_function).
CONV_PROBES = ("mamba_ssm.modules.mamba_simple", "mamba_ssm.modules.mamba2",
               "mamba_ssm.ops.selective_scan_interface", "mamba_ssm.ops.triton.ssd_combined")
CONV_NAMES = ("causal_conv1d_fn", "causal_conv1d_cuda", "causal_conv1d_fwd_function",
              "causal_conv1d_bwd_function")


def parse_shapes(text):
    out = []
    for s in text.split(","):
        b, L, d = (int(v) for v in s.lower().split("x"))
        out.append((b, L, d))
    return out


def causal_conv1d_report():
    """Which causal_conv1d entry points each mamba_ssm module sees (None: its fast path
    either asserts or falls back to slower code)."""
    rep = {"causal_conv1d": package_version("causal_conv1d")}
    for modname in CONV_PROBES:
        try:
            mod = importlib.import_module(modname)
        except Exception as e:  # noqa: BLE001
            rep[modname] = f"import failed: {e!r}"
            continue
        rep[modname] = {n: getattr(mod, n) is not None for n in CONV_NAMES if hasattr(mod, n)}
    return rep


# ------------------------------------------------------------------- one side


class Side:
    """A layer, its own leaf input and the callables that are timed."""

    def __init__(self, name, layer, x, dout, amp):
        self.name, self.layer, self.x, self.dout, self.amp = name, layer, x, dout, amp
        self.params = [p for p in layer.parameters() if p.requires_grad]
        self.leaves = [x] + self.params

    def fwd(self):
        with torch.no_grad(), self.amp():
            return self.layer(self.x)

    def fwd_train(self):
        with self.amp():
            return self.layer(self.x)

    def fwd_bwd(self):
        with self.amp():
            out = self.layer(self.x)
        out.backward(self.dout)
        return out

    def zero(self):
        for t in self.leaves:
            t.grad = None

    def grads(self, named_params):
        """Output and gradients of one forward+backward, by name ('x' for the input)."""
        self.zero()
        out = self.fwd_bwd().detach().clone()
        g = {"x": self.x.grad.detach().clone()}
        g.update({n: p.grad.detach().clone() for n, p in named_params if p.grad is not None})
        self.zero()
        return out, g


def compare(res_ours, res_ref):
    out_o, g_o = res_ours
    out_r, g_r = res_ref
    errs = {"out": rel_err(out_o, out_r)}
    for k, v in g_r.items():
        errs["d" + k] = rel_err(g_o[k], v) if k in g_o else float("nan")
    missing = [k for k in g_o if k not in g_r] + [k for k in g_r if k not in g_o]
    return errs, missing


def worst_err(errs):
    """(name, value) of the largest error; NaN counts as the largest."""
    k = max(errs, key=lambda k: errs[k] if errs[k] == errs[k] else float("inf"))
    return k, errs[k]


def fmt_errs(errs):
    worst, _ = worst_err(errs)
    flag = "" if errs[worst] <= TOL else f"   <-- FLAG: {worst} {errs[worst]:.2e} > {TOL:g}"
    body = ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
    return f"max {errs[worst]:.2e} ({worst}){flag}\n      {body}"


def peak_mb(side, device):
    """Peak memory of one forward+backward above what was allocated before it, and what
    stays allocated after (the parameter and input gradients), in MiB."""
    if device != "cuda":
        return None, None, None
    side.zero()
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with side.amp():
        out = side.layer(side.x)
    torch.cuda.synchronize()
    saved = torch.cuda.memory_allocated() - before  # output + tensors kept for backward
    out.backward(side.dout)
    del out
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    kept = torch.cuda.memory_allocated() - before
    side.zero()
    mib = 2.0 ** 20
    return peak / mib, saved / mib, kept / mib


def time_side(side, device, rec, key, warm=3):
    """Into rec: fwd, fwd(grad) and fwd+bwd ms of side (harness.wall_ms: do_bench on CUDA,
    perf_counter medians on the CPU) after ``warm`` untimed calls of each, and on CUDA the
    peak memory of one fwd+bwd."""
    for fn in (side.fwd, side.fwd_train, side.fwd_bwd):  # autotune / compile outside timing
        for _ in range(warm):
            fn()
        side.zero()
    if device == "cuda":
        torch.cuda.synchronize()
    rec[f"fwd_ms_{key}"] = wall_ms(side.fwd, device)
    rec[f"fwd_train_ms_{key}"] = wall_ms(side.fwd_train, device)
    rec[f"fwdbwd_ms_{key}"] = wall_ms(side.fwd_bwd, device, grad_to_none=side.leaves)
    side.zero()
    peak, saved, kept = peak_mb(side, device)
    if peak is not None:
        rec[f"peak_mb_{key}"] = peak
        rec[f"fwd_saved_mb_{key}"], rec[f"grads_mb_{key}"] = saved, kept
    print(f"  {key:>14}: fwd {rec[f'fwd_ms_{key}']:.3f} ms, fwd(grad) "
          f"{rec[f'fwd_train_ms_{key}']:.3f} ms, fwd+bwd {rec[f'fwdbwd_ms_{key}']:.3f} ms"
          + (f", peak {peak:.0f} MiB (after fwd {saved:.0f}, grads {kept:.0f})"
             if peak is not None else ""), flush=True)


# ------------------------------------------------------------------- profiler


def profile_side(side, device, iters, path, top=12):
    """Profile ``iters`` forward+backward calls; print the top kernels by device time (CPU:
    ops by self CPU time), write the full op table to ``path``. Returns a summary."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    for _ in range(2):
        side.fwd_bwd()
        side.zero()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    with profile(activities=acts) as prof:
        for _ in range(iters):
            side.fwd_bwd()
            side.zero()
        sync()
    if device == "cuda":
        agg = {}
        for ev in prof.events():
            if ev.device_type == torch.autograd.DeviceType.CUDA:
                tot, cnt = agg.get(ev.name, (0.0, 0))
                agg[ev.name] = (tot + ev.time_range.elapsed_us(), cnt + 1)
        rows = sorted(((n, t, c) for n, (t, c) in agg.items()), key=lambda r: -r[1])
        sort_by = "self_device_time_total"
    else:
        rows = sorted(((e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()),
                      key=lambda r: -r[1])
        sort_by = "self_cpu_time_total"
    total_ms = sum(r[1] for r in rows) / 1e3 / iters
    what = "kernels by CUDA time" if device == "cuda" else "ops by self CPU time"
    print(f"  profile {side.name}: {what}, per iteration (sum {total_ms:.3f} ms/iter, "
          f"{iters} iters)")
    for name, t, c in rows[:top]:
        short = name if len(name) <= 88 else name[:85] + "..."
        print(f"    {t / 1e3 / iters:8.3f} ms  {c / iters:5.1f}x  {short}")
    with open(path, "w") as f:
        f.write(f"# {side.name}: {iters} forward+backward iterations; totals over all of them\n")
        f.write(f"# {what}, summed over {iters} iterations (us, count):\n")
        for name, t, c in rows:
            f.write(f"{t:12.1f} {c:7d}  {name}\n")
        f.write("\n# torch.profiler key_averages, sorted by " + sort_by + "\n")
        f.write(prof.key_averages().table(sort_by=sort_by, row_limit=-1, max_name_column_width=120))
    return dict(kernel_ms_per_iter=total_ms,
                top=[dict(name=n, ms_per_iter=t / 1e3 / iters, count_per_iter=c / iters)
                     for n, t, c in rows[:top]])


# ------------------------------------------------------------------- one case


def build_theirs(spec, d_model, kwargs, device, dtype, smoke):
    """mamba_ssm's layer, or (smoke) a second mimetic layer standing in for it."""
    if smoke:
        layer = spec["ours"](d_model, **kwargs, device=device, dtype=dtype)
        return layer, "mimetic (smoke stand-in)"
    mod = importlib.import_module(spec["theirs"][0])
    layer = getattr(mod, spec["theirs"][1])(d_model, **kwargs, device=device, dtype=dtype)
    return layer, f"{spec['theirs'][0]}.{spec['theirs'][1]}"


def run_case(args, layer_name, shape, precision, rows, details):
    spec = LAYERS[layer_name]
    device = "cpu" if args.smoke else "cuda"
    b, L, d_model = shape
    kwargs = dict(spec["kwargs"])
    amp_dtype = torch.bfloat16
    if precision == "bf16":
        pdtype, amp = amp_dtype, contextlib.nullcontext
    else:
        pdtype = torch.float32
        amp = lambda: torch.autocast(device, dtype=amp_dtype)  # noqa: E731
    case = f"{layer_name} {b}x{L}x{d_model} {precision}"
    print(f"\n=== {case}: {kwargs}", flush=True)
    rec = dict(layer=layer_name, shape=shape, precision=precision, kwargs=kwargs)
    details.append(rec)

    torch.manual_seed(0)
    theirs = None
    try:
        theirs, rec["theirs_class"] = build_theirs(spec, d_model, kwargs, device, pdtype,
                                                   args.smoke)
    except Exception as e:  # noqa: BLE001
        rec["theirs_error"] = repr(e)
        print("  theirs unavailable:", repr(e), flush=True)
    ours = spec["ours"](d_model, **kwargs, device=device, dtype=pdtype)
    if theirs is not None:
        # Make the weights generic (D = 1 and norm weight = 1 at init would hide a D or a
        # norm weight that is ignored), then give ours exactly theirs.
        with torch.no_grad():
            for n, p in theirs.named_parameters():
                if n in ("D", "norm.weight"):
                    p.add_(0.1 * torch.randn_like(p))
        if getattr(theirs, "d_inner", None) != ours.d_inner:
            print(f"  WARNING: theirs d_inner {getattr(theirs, 'd_inner', None)} != ours "
                  f"{ours.d_inner}", flush=True)
        sd_t, sd_o = theirs.state_dict(), ours.state_dict()
        rec["missing_in_theirs"] = [k for k in sd_o if k not in sd_t]
        rec["missing_in_ours"] = [k for k in sd_t if k not in sd_o]
        rec["dtype_differs"] = {k: (str(sd_o[k].dtype), str(v.dtype)) for k, v in sd_t.items()
                                if k in sd_o and sd_o[k].dtype != v.dtype}
        if rec["missing_in_theirs"] or rec["missing_in_ours"]:
            print(f"  WARNING: parameter names differ: only ours {rec['missing_in_theirs']}, "
                  f"only theirs {rec['missing_in_ours']}", flush=True)
        ours.load_state_dict(sd_t, strict=True)  # casts into our dtypes (copy_)
        if rec["dtype_differs"]:
            print(f"  parameter dtypes (ours, theirs) that differ, same values: "
                  f"{rec['dtype_differs']}", flush=True)
        if not args.smoke:
            rec["theirs_fast_path"] = {k: getattr(theirs, k, None)
                                       for k in ("use_fast_path", "use_mem_eff_path")}
    print(f"  ours {type(ours).__module__}.{type(ours).__name__}; theirs "
          f"{rec.get('theirs_class', '-')}", flush=True)

    g = torch.Generator(device=device).manual_seed(1)
    x0 = torch.randn(b, L, d_model, device=device, generator=g, dtype=torch.float32)
    x0 = x0.to(pdtype)
    dout0 = torch.randn(b, L, d_model, device=device, generator=g).to(amp_dtype)

    def leaf():
        return x0.detach().clone().requires_grad_(True)

    side_o = Side("ours", ours, leaf(), dout0, amp)
    sides = [side_o]
    side_t = Side("theirs", theirs, leaf(), dout0, amp) if theirs is not None else None
    if side_t is not None:
        sides.append(side_t)

    # 1. correctness
    res_o = side_o.grads(list(ours.named_parameters()))
    rec["out_dtype"] = str(res_o[0].dtype)
    if res_o[0].dtype != dout0.dtype:
        for s in sides:
            s.dout = dout0.to(res_o[0].dtype)
    res_t = None
    if side_t is not None:
        try:
            res_t = side_t.grads(list(theirs.named_parameters()))
            errs, missing = compare(res_o, res_t)
            rec["errs_vs_theirs"] = errs
            rec["max_err_vs_theirs"] = worst_err(errs)[1]
            print("  ours vs theirs rel err:", fmt_errs(errs), flush=True)
            if missing:
                print("  gradients present on one side only:", missing, flush=True)
        except Exception as e:  # noqa: BLE001
            rec["theirs_error"] = repr(e)
            print("  theirs failed:", repr(e), flush=True)
            traceback.print_exc()
            sides.remove(side_t)
            side_t = None

    # 2-3. timing and memory
    for s in sides:
        time_side(s, device, rec, s.name)
        if device == "cuda":
            torch.cuda.empty_cache()

    # 4. torch.compile(ours)
    if not args.no_compile:
        try:
            t0 = time.perf_counter()
            compiled = torch.compile(ours, mode=args.compile_mode)
            side_c = Side("ours_compiled", compiled, side_o.x, side_o.dout, amp)
            side_c.params, side_c.leaves = side_o.params, side_o.leaves
            res_c = side_c.grads(list(ours.named_parameters()))
            rec["compile_s"] = time.perf_counter() - t0
            errs_c, _ = compare(res_c, res_o)
            rec["errs_compiled_vs_eager"] = errs_c
            print(f"  compiled in {rec['compile_s']:.1f} s; compiled vs eager ours:",
                  fmt_errs(errs_c), flush=True)
            if res_t is not None:
                errs_ct, _ = compare(res_c, res_t)
                rec["errs_compiled_vs_theirs"] = errs_ct
                print("  compiled ours vs theirs:", fmt_errs(errs_ct), flush=True)
            time_side(side_c, device, rec, "ours_compiled")
        except Exception as e:  # noqa: BLE001
            rec["compile_error"] = f"{type(e).__name__}: {e}"[:2000]
            print("  torch.compile(ours) failed:", rec["compile_error"][:500], flush=True)
        finally:
            side_o.zero()
            torch._dynamo.reset()

    # 5. profile
    if not args.no_profile:
        tag = f"{layer_name}_{b}x{L}x{d_model}_{precision}"
        rec["profile"] = {}
        for s in sides:
            try:
                path = os.path.join(args.out, f"profile_{tag}_{s.name}.txt")
                rec["profile"][s.name] = profile_side(s, device, args.profile_iters, path)
            except Exception as e:  # noqa: BLE001
                rec["profile"][s.name] = dict(error=repr(e))
                print(f"  profile {s.name} failed:", repr(e), flush=True)

    print_record({k: v for k, v in rec.items() if k != "profile"})
    f = lambda k, p=3: f"{rec[k]:.{p}f}" if k in rec else "-"  # noqa: E731
    ratio = lambda a, c: f"{rec[c] / rec[a]:.2f}x" if a in rec and c in rec else "-"  # noqa: E731
    err = f"{rec['max_err_vs_theirs']:.1e}" if "max_err_vs_theirs" in rec else "-"
    for key, label in (("ours", case), ("ours_compiled", case + " compiled")):
        if f"fwdbwd_ms_{key}" not in rec:
            continue
        rows.append((label, f(f"fwd_ms_{key}"), f("fwd_ms_theirs"),
                     ratio(f"fwd_ms_{key}", "fwd_ms_theirs"), f(f"fwdbwd_ms_{key}"),
                     f("fwdbwd_ms_theirs"), ratio(f"fwdbwd_ms_{key}", "fwdbwd_ms_theirs"),
                     f(f"peak_mb_{key}", 0), f("peak_mb_theirs", 0),
                     err if key == "ours" else "-"))
    del sides, side_o, side_t, ours, theirs
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", default="mamba1,mamba2")
    ap.add_argument("--shapes", default="8x2048x768", help="comma list of BATCHxLENGTHxD_MODEL")
    ap.add_argument("--precision", default="bf16,autocast", help="comma list of bf16, autocast")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile(ours)")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default: default)")
    ap.add_argument("--no-profile", action="store_true", help="skip the torch.profiler tables")
    ap.add_argument("--profile-iters", type=int, default=5)
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, tiny shape, ours only (theirs = a second mimetic layer)")
    ap.add_argument("--out", default=os.environ.get("OUT") or None)
    args = ap.parse_args()
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="gpu_layers_")
    os.makedirs(args.out, exist_ok=True)
    if args.smoke and args.shapes == ap.get_default("shapes"):
        args.shapes = "2x300x64"  # one full Mamba-2 chunk of 256 and a partial one
    precisions = args.precision.split(",")
    bad = [p for p in precisions if p not in ("bf16", "autocast")]
    if bad:
        ap.error(f"unknown precision {bad}")
    layers = args.layers.split(",")
    bad = [name for name in layers if name not in LAYERS]
    if bad:
        ap.error(f"unknown layer {bad}; choose from {list(LAYERS)}")

    info = env_info("cpu" if args.smoke else "cuda", smoke=args.smoke,
                    allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    if not args.smoke:
        info["mamba_ssm"] = package_version("mamba_ssm")
        info["causal_conv1d"] = causal_conv1d_report()
    print_record(info)
    if not args.smoke:
        conv = info["causal_conv1d"]
        dead = [m for m in CONV_PROBES
                if not isinstance(conv.get(m), dict) or (conv[m] and not any(conv[m].values()))]
        unknown = [m for m in CONV_PROBES if conv.get(m) == {}]
        if dead:
            print(f"WARNING: causal_conv1d not visible in {dead}: mamba_ssm's fast paths there "
                  "are off or fail, so theirs is not the fast layer this compares against",
                  flush=True)
        if unknown:
            print(f"note: none of {CONV_NAMES} found in {unknown} (other import names?)",
                  flush=True)

    rows, details = [], []
    for layer_name in layers:
        for shape in parse_shapes(args.shapes):
            for precision in precisions:
                try:
                    run_case(args, layer_name, shape, precision, rows, details)
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    details.append(dict(layer=layer_name, shape=shape, precision=precision,
                                        error=repr(e)))
                    if not args.smoke and torch.cuda.is_available():
                        torch.cuda.empty_cache()
    unit = "ms (perf_counter, CPU)" if args.smoke else "ms (do_bench median)"
    head = ("case", "fwd ours", "fwd theirs", "fwd speedup", "f+b ours", "f+b theirs",
            "f+b speedup", "peak MiB ours", "peak MiB theirs", "max rel err")
    path = write_results(args.out, "gpu_layers", info, details, table=(head, rows))
    print(f"\nwrote {path}; times in {unit}, speedup = theirs / ours")
    print(markdown_table(head, rows))
    for rec in details:
        case = f"{rec['layer']} {'x'.join(map(str, rec['shape']))} {rec['precision']}"
        for key in ("error", "theirs_error", "compile_error"):
            if key in rec:
                print(f"{case}: {key}: {rec[key][:300]}")
        if not rec.get("max_err_vs_theirs", 0) <= TOL:
            print(f"{case}: ours vs theirs rel err {rec['max_err_vs_theirs']:.2e} > {TOL:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
