"""GPU benchmark of mimetic's Triton kernels, side by side with mamba_ssm when importable.

For each op and each of its shapes (``SS_SHAPES``, ``SSD_SHAPES``, ``CONV_SHAPES``: those of
the mamba_ssm timings in the project's design notes, ``DESIGN.md`` in the shared folder
beside the checkout, not in this repository) it first checks the kernel against an oracle
(mamba_ssm's output and gradients where present, else the sequential reference on a
small slice), then times forward and forward+backward with ``harness.cuda_ms``
(``triton.testing.do_bench``'s median; inputs are random, never zeros). Selective-scan
kernel variants are launch configurations (``ScanConfig``) passed to the op, so one run
compares them.

Usage (on the device):  python benchmarks/gpu.py [--ops ss,ssd,conv] [--quick] [--out DIR]
Prints a table last; writes every number as JSON to DIR/gpu_results.json.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import replace

import torch

import harness  # benchmarks/harness.py: this script's folder is first on sys.path

COPY_TBPS = 3.0e12  # device-to-device copy rate; main() replaces it by this device's, measured


def measure_copy_tbps(gib: float = 2.0) -> float:
    """Bytes read plus written per second by a large device-to-device copy (METHOD.md's
    memory ceiling), measured on this GPU: the floor of the memory-bound ops."""
    src = torch.randn(int(gib * 2**30) // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = harness.cuda_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / (ms * 1e-3)


def errs(out, grads, ref_out, ref_grads) -> list[float]:
    """``harness.rel_err`` of the output, then of each gradient, against the reference's."""
    return [harness.rel_err(out, ref_out)] + [harness.rel_err(a, c) for a, c in zip(grads, ref_grads)]


# ------------------------------------------------------------------- selective scan

SS_SHAPES = [(8, 1536, 2048, 16), (2, 1536, 8192, 16), (8, 5120, 2048, 16), (1, 1536, 65536, 16)]


def ss_inputs(b, d, L, n, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    return dict(
        u=r(b, d, L).to(dtype), delta=(0.5 * r(b, d, L) - 1.0).to(dtype),
        A=-torch.exp(0.5 * r(d, n)), B=r(b, n, L).to(dtype), C=r(b, n, L).to(dtype),
        D=r(d), z=r(b, d, L).to(dtype), delta_bias=0.3 * r(d) - 1.0,
    )


def ss_call(fn, t, **kw):
    return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
              delta_bias=t["delta_bias"], delta_softplus=True, **kw)


def ss_fwd_bwd(fn, t, dout, **kw):
    leaves = [v for v in t.values() if v.requires_grad]
    out = ss_call(fn, t, **kw)
    out.backward(dout)
    return out, [v.grad for v in leaves]


def _ss_variant(forward=None, lane=None, **segment):
    """A selective-scan variant: (inputs, need_grad) -> its ``ScanConfig``, the default
    with ``forward``, the lane tiles ``lane`` = (channels, warps, steps) (forward and
    backward) and the segment tiles ``segment`` replaced. Segment steps apply without a
    gradient only (with one the segments are the lane backward's chunks)."""
    from mimetic.ops.selective_scan.triton_config import LaneTiles, default_config, next_pow2

    def make(t, need_grad):
        cfg = default_config(t["u"], t["A"], t["B"], need_grad)
        tiles = cfg.lane if lane is None else LaneTiles(*lane)
        seg = dict(segment)
        if "warps" in seg:  # one channel per thread
            seg["channels"] = min(32 * seg.pop("warps"), next_pow2(t["u"].shape[1]))
        if need_grad:
            seg["steps"] = tiles.steps
        return replace(cfg, forward=forward or cfg.forward, lane=tiles,
                       segment=replace(cfg.segment, **seg))
    return make


# Forward variants, each followed by the lane backward (its default tiles unless the
# variant sets them).
SS_VARIANTS = {
    "auto": _ss_variant(),  # the defaults
    "lane": _ss_variant("lane"),
    "segment_pf": _ss_variant("segment", prefetch=True),
    "segment_nopf": _ss_variant("segment", prefetch=False),
    **{f"lane_d{d}_w{w}_t{t}": _ss_variant("lane", (d, w, t))
       for (d, w, t) in [(4, 4, 256), (8, 4, 128), (16, 4, 64), (16, 8, 128), (16, 8, 64)]},
    # Segmented forward (docs/kernels.md, "Selective scan"): segment length, warps per
    # program, steps per B/C load.
    **{f"segment_t{t}_w{w}_kb{kb}": _ss_variant("segment", steps=t, warps=w, bc_steps=kb)
       for (t, w, kb) in [(128, 4, 2), (64, 4, 2), (64, 2, 2), (64, 4, 1), (256, 4, 2)]},
}


def run_selective_scan(args, rows, details):
    mod = importlib.import_module("mimetic.ops.selective_scan.triton")
    ours = mod.selective_scan_triton
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as theirs
    except Exception as e:  # noqa: BLE001
        print("mamba_ssm unavailable:", repr(e))
        theirs = None
    variants = SS_VARIANTS
    if args.variants:
        variants = {k: v for k, v in variants.items() if k in args.variants.split(",")}
    fwdbwd_variants = tuple(variants) if not args.quick else tuple(variants)[:1]
    shapes = SS_SHAPES[:1] if args.quick else SS_SHAPES
    for dtype in (torch.bfloat16, torch.float32):
        for (b, d, L, n) in shapes:
            t = ss_inputs(b, d, L, n, dtype)
            dout = torch.randn(b, d, L, device="cuda", dtype=dtype)
            rec = dict(op="selective_scan", shape=(b, d, L, n), dtype=str(dtype))
            elem = 2 if dtype == torch.bfloat16 else 4
            floor_ms = (4 * b * d * L + 2 * b * n * L) * elem / COPY_TBPS * 1e3
            rec["floor_fwd_ms"] = floor_ms
            # Correctness against mamba_ssm on the full shape (fwd and all grads).
            tg = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
            for name, variant in variants.items():
                tg = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
                train, infer = variant(t, True), variant(t, False)
                out, grads = ss_fwd_bwd(ours, tg, dout, config=train)
                if theirs is not None:
                    tm = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
                    out_m, grads_m = ss_fwd_bwd(theirs, tm, dout)
                    errs_m = errs(out, grads, out_m, grads_m)
                    rec[f"err_vs_mamba_{name}"] = max(errs_m)
                    rec[f"errs_vs_mamba_{name}"] = errs_m
                with torch.no_grad():
                    rec[f"fwd_ms_{name}"] = harness.cuda_ms(lambda: ss_call(ours, t, config=infer))
                if name in fwdbwd_variants:
                    rec[f"fwdbwd_ms_{name}"] = harness.cuda_ms(lambda: ss_fwd_bwd(ours, tg, dout, config=train),
                                                               grad_to_none=list(tg.values()))
            rec["fwdbwd_ms_ours"] = min(rec[f"fwdbwd_ms_{k}"] for k in fwdbwd_variants)
            if theirs is not None:
                tm = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
                with torch.no_grad():
                    rec["fwd_ms_mamba"] = harness.cuda_ms(lambda: ss_call(theirs, t))
                rec["fwdbwd_ms_mamba"] = harness.cuda_ms(lambda: ss_fwd_bwd(theirs, tm, dout),
                                                         grad_to_none=list(tm.values()))
            best = min((k for k in rec if k.startswith("fwd_ms_") and k != "fwd_ms_mamba"),
                       key=lambda k: rec[k])
            rec["best_fwd"] = best
            details.append(rec)
            harness.print_record(rec)
            fm, bm = rec.get("fwd_ms_mamba"), rec.get("fwdbwd_ms_mamba")
            rows.append((
                f"ss {b}x{d}x{L}x{n} {str(dtype)[6:]}",
                f"{rec[best]:.3f} ({best[7:]})", f"{fm:.3f}" if fm else "-",
                f"{fm / rec[best]:.2f}x" if fm else "-",
                f"{rec['fwdbwd_ms_ours']:.3f}", f"{bm:.3f}" if bm else "-",
                f"{bm / rec['fwdbwd_ms_ours']:.2f}x" if bm else "-",
                f"{floor_ms / rec[best]:.0%}",
            ))
            t = tg = dout = None  # free the inputs before the next shape (the timers' closures hold the names)
            torch.cuda.empty_cache()


# ------------------------------------------------------------------- SSD (Mamba-2)

SSD_SHAPES = [(8, 2048, 24, 64, 128), (2, 8192, 24, 64, 128)]


def ssd_inputs(b, L, H, P, N, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    return dict(
        x=r(b, L, H, P).to(dtype), dt=(0.5 * r(b, L, H) - 1.0).to(dtype),
        A=-torch.exp(r(H) * 0.5 + 1.0), B=r(b, L, 1, N).to(dtype), C=r(b, L, 1, N).to(dtype),
        D=r(H), z=r(b, L, H, P).to(dtype), dt_bias=0.3 * r(H) - 1.0,
    )


def ssd_call(fn, t):
    return fn(t["x"], t["dt"], t["A"], t["B"], t["C"], 256, D=t["D"], z=t["z"],
              dt_bias=t["dt_bias"], dt_softplus=True)


def parse_ssd_variants(spec: str) -> dict:
    """"64x4x8,32x8x4" -> {name: dict(BLOCK_M=, BLOCK_WARPS=, HEADS_PER_PROGRAM=)}."""
    out = {}
    for item in filter(None, spec.split(",")):
        bm, w, hp = (int(v) for v in item.split("x"))
        out[f"bm{bm}_w{w}_h{hp}"] = dict(BLOCK_M=bm, BLOCK_WARPS=w, HEADS_PER_PROGRAM=hp)
    return out


def run_ssd(args, rows, details):
    try:
        mod = importlib.import_module("mimetic.ops.ssd.triton")
        ours = mod.ssd_scan_triton
    except ImportError:
        mod = ours = None
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as theirs
    except Exception as e:  # noqa: BLE001
        print("mamba_ssm ssd unavailable:", repr(e))
        theirs = None
    shapes = SSD_SHAPES[:1] if args.quick else SSD_SHAPES
    for (b, L, H, P, N) in shapes:
        dtype = torch.bfloat16
        t = ssd_inputs(b, L, H, P, N, dtype)
        dout = torch.randn(b, L, H, P, device="cuda", dtype=dtype)
        rec = dict(op="ssd", shape=(b, L, H, P, N), dtype=str(dtype))

        def fb(fn, tt):
            out = ssd_call(fn, tt)
            out.backward(dout)
            # Clone: do_bench's warm-up calls accumulate into these same .grad tensors.
            return out, [v.grad.clone() for v in tt.values()]

        res = {}
        for name, fn in (("ours", ours), ("mamba", theirs)):
            if fn is None:
                continue
            tt = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
            res[name] = fb(fn, tt)
            with torch.no_grad():
                rec[f"fwd_ms_{name}"] = harness.cuda_ms(lambda: ssd_call(fn, t))
            rec[f"fwdbwd_ms_{name}"] = harness.cuda_ms(lambda: fb(fn, tt), grad_to_none=list(tt.values()))
        if len(res) == 2:
            (o1, g1), (o2, g2) = res["ours"], res["mamba"]
            rec["errs_vs_mamba"] = errs(o1, g1, o2, g2)
        # GPU time from torch.profiler: the kernels' plus the memcpy/memset time (fb's clones
        # of the gradients are copies), as this script has always reported it, so that the
        # SSD kernel-ms numbers in RESULTS.md stay comparable.
        for name, fn in (("ours", ours), ("mamba", theirs)):
            if fn is not None:
                tt = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
                rec[f"fwdbwd_kernel_ms_{name}"] = harness.kernel_ms(lambda: fb(fn, tt), copies=True)
        # Tilings of our kernels (BLOCK_M x warps x heads per program); checked against
        # the default's output and gradients, then timed (wall and kernel time).
        variants = parse_ssd_variants(args.ssd_variants) if ours is not None else {}
        default = {k: getattr(mod, k) for k in ("BLOCK_M", "BLOCK_WARPS", "HEADS_PER_PROGRAM")}
        for name, over in variants.items():
            for k, v in over.items():
                setattr(mod, k, v)
            tt = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
            o, g = fb(ours, tt)
            o0, g0 = res["ours"]
            rec[f"err_vs_default_{name}"] = max(errs(o, g, o0, g0))
            with torch.no_grad():
                rec[f"fwd_ms_{name}"] = harness.cuda_ms(lambda: ssd_call(ours, t))
            rec[f"fwdbwd_ms_{name}"] = harness.cuda_ms(lambda: fb(ours, tt), grad_to_none=list(tt.values()))
            rec[f"fwdbwd_kernel_ms_{name}"] = harness.kernel_ms(lambda: fb(ours, tt), copies=True)
            for k, v in default.items():
                setattr(mod, k, v)
        details.append(rec)
        harness.print_record(rec)
        f = lambda k: f"{rec[k]:.3f}" if k in rec else "-"  # noqa: E731
        ratio = lambda a, b: f"{rec[b] / rec[a]:.2f}x" if a in rec and b in rec else "-"  # noqa: E731
        rows.append((f"ssd {b}x{L}x{H}x{P}x{N} bf16", f("fwd_ms_ours"), f("fwd_ms_mamba"),
                     ratio("fwd_ms_ours", "fwd_ms_mamba"), f("fwdbwd_ms_ours"),
                     f("fwdbwd_ms_mamba"), ratio("fwdbwd_ms_ours", "fwdbwd_ms_mamba"), "-"))


# ------------------------------------------------------------------- causal conv1d

# (batch, dim, L, W, slice): slice None: x (batch, dim, L) L-contiguous (Mamba-1);
# (offset, width): x channels last, the transposed view of columns offset:offset+dim of a
# (batch, L, width) projection (Mamba-2's xBC: d_model 768, expand 2, d_state 128, 1 group,
# headdim 64 -> columns 1536:3328 of 3352), and dout channels last as the layer gives it.
CONV_SHAPES = [(8, 1536, 2048, 4, None), (2, 1536, 8192, 4, None),
               (8, 1792, 2048, 4, (1536, 3352)), (2, 1792, 8192, 4, (1536, 3352))]

# Channels-last tiles to try, one kernel at a time around the default (the module's
# TILES_CL): (BLOCK_D, BLOCK_T, num_warps, vector cap). fwd: timed forward only; dpre, dx:
# forward+backward. At the first channels-last shape, not with --quick.
CONV_CL_TILE_VARIANTS = dict(
    fwd=[(128, 16, 4, 8), (64, 32, 4, 8), (256, 16, 4, 8), (64, 64, 4, 8), (128, 32, 8, 8)],
    dpre=[(64, 32, 4, 4), (128, 16, 4, 4), (32, 64, 4, 8), (32, 128, 4, 4), (64, 64, 8, 4)],
    dx=[(128, 32, 4, 8), (64, 32, 4, 8), (64, 64, 4, 8), (256, 16, 8, 8)],
)


def run_conv(args, rows, details):
    mod = importlib.import_module("mimetic.ops.causal_conv1d.triton")
    ours = mod.causal_conv1d_triton
    baselines = [("torch", importlib.import_module("mimetic.ops.causal_conv1d.shifted")
                  .causal_conv1d_torch)]
    try:  # the CUDA kernels mamba_ssm uses (channels-last ones for a channels-last x)
        from causal_conv1d import causal_conv1d_fn

        def cuda_fn(x, w, bias, activation=None):
            return causal_conv1d_fn(x, w, bias, activation=activation)
        baselines.append(("cuda", cuda_fn))
    except Exception:  # noqa: BLE001
        pass
    swept = False
    for (b, d, L, W, cols) in CONV_SHAPES:
        if args.quick and L > 2048:
            continue
        dtype = torch.bfloat16
        g = torch.Generator(device="cuda").manual_seed(0)
        if cols is None:
            x = torch.randn(b, d, L, device="cuda", generator=g).to(dtype)
            dout = torch.randn(b, d, L, device="cuda", generator=g).to(dtype)
        else:
            off, width = cols
            proj = torch.randn(b, L, width, device="cuda", generator=g).to(dtype)
            x = proj[:, :, off:off + d].transpose(1, 2)
            dout = torch.randn(b, L, d, device="cuda", generator=g).to(dtype).transpose(1, 2)
        w = torch.randn(d, W, device="cuda", generator=g).to(dtype)
        bias = torch.randn(d, device="cuda", generator=g).to(dtype)
        layout = ("L-contiguous" if cols is None
                  else f"channels last, columns {cols[0]}:{cols[0] + d} of {cols[1]}")
        rec = dict(op="causal_conv1d", shape=(b, d, L, W), layout=layout, dtype=str(dtype),
                   floor_fwd_ms=2 * b * d * L * 2 / COPY_TBPS * 1e3)

        def timed(name, fn):
            leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, bias)]
            if cols is not None:  # keep x a channels-last view, as the layer passes it
                base = proj.detach().clone().requires_grad_(True)
                leaves[0] = base
                view = lambda t: t[:, :, off:off + d].transpose(1, 2)  # noqa: E731
            else:
                view = lambda t: t  # noqa: E731

            def fb():
                o = fn(view(leaves[0]), leaves[1], leaves[2], activation="silu")
                o.backward(dout)
                return o
            res = (fb(), [t.grad.clone() for t in leaves])
            with torch.no_grad():
                rec[f"fwd_ms_{name}"] = harness.cuda_ms(lambda: fn(x, w, bias, activation="silu"))
            rec[f"fwdbwd_ms_{name}"] = harness.cuda_ms(fb, grad_to_none=leaves)
            return res

        outs = {"ours": timed("ours", ours)}
        for name, fn in baselines:
            try:
                outs[name] = timed(name, fn)
            except Exception as e:  # noqa: BLE001  (e.g. a layout the CUDA kernels refuse)
                rec[f"error_{name}"] = repr(e)
        o1, g1 = outs["ours"]
        for name, (o2, g2) in outs.items():
            if name != "ours":
                rec[f"errs_vs_{name}"] = errs(o1, g1, o2, g2)
        if cols is not None and not args.quick and not swept:
            swept = True
            default = dict(mod.TILES_CL)
            rec["cl_tiles_default"] = default
            tried = {}
            try:
                for op, variants in CONV_CL_TILE_VARIANTS.items():
                    for v in variants:
                        mod.TILES_CL = {**default, op: v}
                        key = f"{op}={'x'.join(map(str, v))}"
                        timed("variant", ours)
                        tried[key] = rec["fwd_ms_variant" if op == "fwd" else "fwdbwd_ms_variant"]
            finally:
                mod.TILES_CL = default
            rec.pop("fwd_ms_variant", None)
            rec.pop("fwdbwd_ms_variant", None)
            rec["cl_tile_variants_ms"] = tried
        details.append(rec)
        harness.print_record(rec)
        tag = "" if cols is None else " channels-last"
        for name in [n for n in outs if n != "ours"]:
            rows.append((f"conv {b}x{d}x{L}x{W}{tag} bf16 (vs {name})", f"{rec['fwd_ms_ours']:.3f}",
                         f"{rec[f'fwd_ms_{name}']:.3f}",
                         f"{rec[f'fwd_ms_{name}'] / rec['fwd_ms_ours']:.2f}x",
                         f"{rec['fwdbwd_ms_ours']:.3f}", f"{rec[f'fwdbwd_ms_{name}']:.3f}",
                         f"{rec[f'fwdbwd_ms_{name}'] / rec['fwdbwd_ms_ours']:.2f}x",
                         f"{rec['floor_fwd_ms'] / rec['fwd_ms_ours']:.0%}"))


PROFILE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def profile_once(variant: str = "", backend: str = "triton", dtype: str = "bf16"):
    """Two forwards without gradients and two forward+backward passes of the selective
    scan at ``SS_SHAPES[0]``, for running under ncu (``-k regex:_ss_`` for Triton,
    ``regex:mimetic_ss`` for CUDA). ``backend``: "triton" or "cuda" (the run-time compiled
    kernels, in their default layouts); ``dtype``: "bf16" or "fp32"; ``variant``: one name of
    ``SS_VARIANTS`` (e.g. a segment configuration; Triton only), else the default."""
    b, d, L, n = SS_SHAPES[0]
    t = ss_inputs(b, d, L, n, PROFILE_DTYPES[dtype])
    dout = torch.randn(b, d, L, device="cuda", dtype=PROFILE_DTYPES[dtype])
    tg = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
    if backend == "cuda":
        from mimetic.ops.selective_scan.cuda import selective_scan_cuda as scan
        fwd_kw = bwd_kw = {}
    else:
        scan = importlib.import_module("mimetic.ops.selective_scan.triton").selective_scan_triton
        make = SS_VARIANTS[variant or "auto"]
        fwd_kw, bwd_kw = dict(config=make(t, False)), dict(config=make(tg, True))
    for _ in range(2):
        with torch.no_grad():
            ss_call(scan, t, **fwd_kw)
        ss_fwd_bwd(scan, tg, dout, **bwd_kw)
    torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true", help="one fwd+bwd, for ncu")
    ap.add_argument("--profile-backend", default="triton", choices=["triton", "cuda"])
    ap.add_argument("--profile-dtype", default="bf16", choices=sorted(PROFILE_DTYPES))
    ap.add_argument("--ops", default="ss,ssd,conv")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--variants", default="", help="comma list of selective-scan variants")
    ap.add_argument("--ssd-variants", default="",
                    help="SSD tilings to time, e.g. 32x8x8,32x8x4 (BLOCK_M x warps x heads/program)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    if args.profile:
        profile_once(args.variants, args.profile_backend, args.profile_dtype)
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    global COPY_TBPS
    COPY_TBPS = measure_copy_tbps()
    info = harness.env_info("cuda", packages=("mamba_ssm",), copy_tbps=round(COPY_TBPS / 1e12, 3))
    harness.print_record(info)
    rows, details = [], []
    ops = args.ops.split(",")
    if "ss" in ops:
        run_selective_scan(args, rows, details)
    if "ssd" in ops:
        run_ssd(args, rows, details)
    if "conv" in ops:
        run_conv(args, rows, details)
    harness.write_results(args.out, "gpu_results", info, details)
    head = ("case", "fwd ms ours", "fwd ms mamba", "fwd speedup", "f+b ms ours",
            "f+b ms mamba", "f+b speedup", "fwd % of mem floor")
    print("\n" + harness.markdown_table(head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
