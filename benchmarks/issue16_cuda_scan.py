"""Issue 16 on the GPU: the run-time compiled CUDA selective scan (ops/selective_scan/cuda.py)
checked and timed against our Triton scan and mamba_ssm's ``selective_scan_fn``.

Sections (``--sections``, comma-separated; all by default):

* ``compile``: the NVRTC route itself: which compiler and version, compile time of each
  specialization the other sections use (empty cache), the ptxas report (registers,
  spills) from the device's own compiler, and a second lookup from the disk cache.
* ``check``: forward and every gradient against the float64 sequential reference on small
  shapes (odd L, d_state 1..256, groups), every dtype, every layout pair and the feature
  combinations (z, D, bias, softplus, initial / final state, B / C per group, fp32 B / C
  with 16-bit u, strided views as the Mamba layer passes them), next to the Triton scan's
  error on the same case; a CUDA-graph replay; then the four DESIGN shapes against
  mamba_ssm and Triton (relative differences).
* ``bench``: forward (no grad) and forward+backward at the four DESIGN shapes, bf16 and
  fp32, in wall time (``triton.testing.do_bench`` median) and GPU kernel time
  (``torch.profiler``): ours with every layout, Triton, mamba_ssm; the design note's MUFU
  and memory floors beside them.
* ``compiled`` (not in the default list): forward+backward under ``torch.compile``
  (inductor): the compiled op on the CUDA kernels and on Triton, the eager CUDA call and
  mamba_ssm, wall and kernel time.

Writes ``OUT/issue16_cuda_scan.json`` (every number) and ``OUT/issue16_cuda_scan.md`` (the
tables); prints one JSON line per case as it goes.

Usage (device): python3 benchmarks/issue16_cuda_scan.py --out $OUT [--sections check] [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import os
import time
import traceback

import torch

import harness
from mimetic.ops import _cuda_rtc
from mimetic.ops.selective_scan import cuda
from mimetic.ops.selective_scan.reference import selective_scan_ref

SHAPES = [(8, 1536, 2048, 16), (2, 1536, 8192, 16), (8, 5120, 2048, 16), (1, 1536, 65536, 16)]
MUFU_EX2_PER_S = 16 * 132 * 1.98e9        # the design note's H200 MUFU ceiling
COPY_BPS = 4.28e12                         # the design note's H200 copy rate (read + write)
LAYOUTS = list(cuda.FWD_LAYOUTS)
PAIRS: list[tuple[str, str]] = []   # mixed (forward, backward) layout pairs the bench adds (--pairs)


def inputs(b, d, L, n, dtype, groups=None, seed=0, bc_dtype=None):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    bc = (b, n, L) if groups is None else (b, groups, n, L)
    return dict(u=r(b, d, L).to(dtype), delta=(0.5 * r(b, d, L) - 1.0).to(dtype), A=-torch.exp(0.5 * r(d, n)),
                B=r(*bc).to(bc_dtype or dtype), C=r(*bc).to(bc_dtype or dtype), D=r(d), z=r(b, d, L).to(dtype),
                delta_bias=0.3 * r(d) - 1.0, initial_state=r(b, d, n))


def call(fn, t, softplus=True, last=False, **kw):
    if t.get("initial_state") is not None:   # mamba_ssm's selective_scan_fn takes no initial state
        kw["initial_state"] = t["initial_state"]
    return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t.get("D"), z=t.get("z"), delta_bias=t.get("delta_bias"),
              delta_softplus=softplus, return_last_state=last, **kw)


def fwd_bwd(fn, t, dout, dlast=None, softplus=True, **kw):
    """(outputs, grads by name) of fn on leaf copies of t."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in t.items() if v is not None}
    outs = call(fn, leaves, softplus=softplus, last=dlast is not None, **kw)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(list(outs), [dout] + ([dlast] if dlast is not None else []))
    return outs, {k: v.grad for k, v in leaves.items()}


def triton_scan():
    from mimetic.ops.selective_scan.triton import selective_scan_triton

    return selective_scan_triton


def mamba_scan():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn
    except Exception as e:  # noqa: BLE001
        print("mamba_ssm unavailable:", repr(e), flush=True)
        return None


# ----------------------------------------------------------------------------- compile


def section_compile(records, tables):
    comp = _cuda_rtc.find_compiler()
    info = dict(section="compile", compiler=None if comp is None else comp.kind,
                compiler_path=None if comp is None else comp.path, version=None if comp is None else comp.version,
                cache=str(_cuda_rtc.cache_dir()))
    harness.print_record(info)
    records.append(info)
    if comp is None:
        return
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}"
    rows = []
    for direction, layouts in (("fwd", cuda.FWD_LAYOUTS), ("bwd", cuda.BWD_LAYOUTS)):
        for (name, layout), (code, bc) in itertools.product(layouts.items(), cuda.DTYPE_PAIRS):
            spec = cuda.Spec(direction, code, bc, layout, cuda.state_group(direction, 16))
            t0 = time.perf_counter()
            got = cuda.compiled(spec, arch)
            s = time.perf_counter() - t0
            res = _cuda_rtc.ptxas_resources(got.log)
            rec = dict(section="compile", spec=spec.name, layout=name, seconds=round(s, 3), from_cache=got.from_cache,
                       **res)
            harness.print_record(rec)
            records.append(rec)
            rows.append((spec.name, f"{s:.2f}", got.from_cache, res.get("registers"), res.get("spill_stores"),
                         res.get("spill_loads")))
    _cuda_rtc._MEMO.clear()
    t0 = time.perf_counter()
    again = cuda.compiled(cuda.Spec("fwd", 1, 1, cuda.FWD_LAYOUTS["A"], 16), arch)
    records.append(dict(section="compile", disk_cache_hit=again.from_cache, seconds=time.perf_counter() - t0))
    tables.append((f"Compile ({comp.kind} {comp.version}, {arch}; disk-cache hit after: {again.from_cache})",
                   ("spec", "s", "cached", "regs", "spill st", "spill ld"), rows))


# ----------------------------------------------------------------------------- check

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _case_errors(t, dtype, softplus, last, config, n):
    b, d, L = t["u"].shape
    dout = torch.randn(b, d, L, device="cuda").to(dtype)
    dlast = torch.randn(b, d, n, device="cuda") if last else None
    ref_t = {k: None if v is None else v.double() for k, v in t.items()}
    ref, ref_g = fwd_bwd(selective_scan_ref, ref_t, dout.double(), None if dlast is None else dlast.double(),
                         softplus)
    got, got_g = fwd_bwd(cuda.selective_scan_cuda, t, dout, dlast, softplus, config=config)
    tri, tri_g = fwd_bwd(triton_scan(), t, dout, dlast, softplus)
    errs = {f"out{i}": harness.rel_err(a, r) for i, (a, r) in enumerate(zip(got, ref))}
    errs.update({f"d{k}": harness.rel_err(got_g[k], ref_g[k]) for k in ref_g})
    terrs = {f"out{i}": harness.rel_err(a, r) for i, (a, r) in enumerate(zip(tri, ref))}
    terrs.update({f"d{k}": harness.rel_err(tri_g[k], ref_g[k]) for k in ref_g})
    return errs, terrs


def section_check(records, tables, quick):
    shapes = [(2, 24, 200, 16, None), (1, 40, 67, 5, 2), (2, 16, 129, 33, 4), (1, 8, 300, 1, None),
              (1, 130, 77, 64, None), (1, 16, 40, 256, None), (3, 64, 64, 16, 64)]
    if quick:
        shapes = shapes[:2]
    features = [dict(), dict(z=None), dict(D=None, delta_bias=None), dict(initial_state=None),
                dict(softplus=False), dict(last=False)]
    # the checks that matter most first (the device script's time limit may cut the rest)
    _real_size_check(records, tables, quick)
    rows, fails = _strided_and_graph_checks(records), 0
    cases = []
    for shape, dtype, layout in itertools.product(shapes, (torch.float32, torch.bfloat16, torch.float16), LAYOUTS):
        cases.append((shape, dtype, (layout, layout), dict(), None))
    for shape, feat in itertools.product(shapes[:3], features):
        cases.append((shape, torch.float32, ("A", "A"), feat, None))
        cases.append((shape, torch.bfloat16, ("B", "C"), feat, None))
    for shape in shapes[:3]:   # float32 B / C with 16-bit u
        cases.append((shape, torch.bfloat16, ("A", "A"), dict(), torch.float32))
        cases.append((shape, torch.float16, ("C", "B"), dict(), torch.float32))
    for shape, dtype, (fl, bl), feat, bc_dtype in cases:
        b, d, L, n, groups = shape
        feat = dict(feat)
        softplus, last = feat.pop("softplus", True), feat.pop("last", True)
        t = inputs(b, d, L, n, dtype, groups, bc_dtype=bc_dtype)
        if not softplus:   # raw time steps must be positive: a negative one grows the state past float32
            t["delta"] = torch.nn.functional.softplus(t["delta"].float()).to(dtype)
        t.update(feat)
        name = f"{b}x{d}x{L}x{n}g{groups} {str(dtype)[6:]} {fl}/{bl} " + (
            ",".join(f"no_{k}" for k in feat) + ("" if softplus else " no_softplus") + ("" if last else " no_last")
            + (" bc_f32" if bc_dtype else ""))
        try:
            errs, terrs = _case_errors(t, dtype, softplus, last, cuda.CudaScanConfig(fl, bl), n)
            worst = max(errs, key=errs.get)
            ok = errs[worst] < TOL[dtype] or errs[worst] <= 2 * terrs.get(worst, 0)
        except Exception:  # noqa: BLE001 -- record and go on: one broken case must not hide the others
            errs, terrs, worst, ok = {}, {}, "error", False
            traceback.print_exc()
        fails += not ok
        rec = dict(section="check", case=name, ok=ok, errs=errs, triton_errs=terrs)
        harness.print_record(rec)
        records.append(rec)
        rows.append((name, "ok" if ok else "FAIL", worst, f"{errs.get(worst, float('nan')):.2e}",
                     f"{terrs.get(worst, float('nan')):.2e}"))
    tables.append((f"Check against the float64 reference ({fails} failed of {len(cases)})",
                   ("case", "result", "worst", "ours", "triton"), rows))


def _strided_and_graph_checks(records):
    """Mamba's layouts (x and z slices of one in_proj output, B and C slices of x_proj's
    output, feature-major) and a CUDA-graph replay of the forward."""
    rows = []
    b, d, L, n = 2, 48, 130, 16
    xz = torch.randn(b, 2 * d, L, device="cuda").to(torch.bfloat16)
    proj = torch.randn(b, L, 4 + 2 * n, device="cuda").to(torch.bfloat16)
    t = dict(u=xz[:, :d], z=xz[:, d:], delta=torch.randn(b, d, L, device="cuda").to(torch.bfloat16) - 1,
             A=-torch.rand(d, n, device="cuda") - 0.5, B=proj[..., 4:4 + n].transpose(1, 2),
             C=proj[..., 4 + n:].transpose(1, 2), D=torch.randn(d, device="cuda"),
             delta_bias=torch.randn(d, device="cuda") - 1, initial_state=None)
    dout = torch.randn(b, d, L, device="cuda").to(torch.bfloat16)
    ref, ref_g = fwd_bwd(selective_scan_ref, {k: None if v is None else v.double() for k, v in t.items()},
                         dout.double())
    got, got_g = fwd_bwd(cuda.selective_scan_cuda, t, dout)
    err = max([harness.rel_err(got[0], ref[0])] + [harness.rel_err(got_g[k], ref_g[k]) for k in ref_g])
    records.append(dict(section="check", case="strided views", err=err))
    rows.append(("strided views (Mamba layer layouts) bf16", "ok" if err < 2e-2 else "FAIL", "max", f"{err:.2e}", "-"))
    # CUDA graph: capture the forward, replay on new inputs
    t2 = inputs(2, 64, 256, 16, torch.bfloat16)
    static = {k: v.clone() for k, v in t2.items()}
    with torch.no_grad():
        call(cuda.selective_scan_cuda, static)   # compile and warm up outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = call(cuda.selective_scan_cuda, static)
        fresh = inputs(2, 64, 256, 16, torch.bfloat16, seed=1)
        for k in static:
            static[k].copy_(fresh[k])
        graph.replay()
        want = call(cuda.selective_scan_cuda, fresh)
    same = torch.equal(out, want)
    records.append(dict(section="check", case="cuda graph replay", equal=same))
    rows.append(("CUDA graph replay of the forward", "ok" if same else "FAIL", "-", "-", "-"))
    return rows


def _real_size_check(records, tables, quick):
    theirs = mamba_scan()
    rows = []
    for (b, d, L, n) in (SHAPES[:1] if quick else SHAPES):
        for dtype in (torch.bfloat16, torch.float32):
            t = inputs(b, d, L, n, dtype)
            t.pop("initial_state")
            dout = torch.randn(b, d, L, device="cuda").to(dtype)
            ours, ours_g = fwd_bwd(cuda.selective_scan_cuda, t, dout)
            tri, tri_g = fwd_bwd(triton_scan(), t, dout)
            vs_tri = max([harness.rel_err(ours[0], tri[0])] + [harness.rel_err(ours_g[k], tri_g[k]) for k in tri_g])
            vs_m = None
            if theirs is not None:
                mt, mt_g = fwd_bwd(theirs, t, dout)
                vs_m = max([harness.rel_err(ours[0], mt[0])] + [harness.rel_err(ours_g[k], mt_g[k]) for k in mt_g])
                tri_m = max([harness.rel_err(tri[0], mt[0])] + [harness.rel_err(tri_g[k], mt_g[k]) for k in mt_g])
            rec = dict(section="check_real", shape=(b, d, L, n), dtype=str(dtype), ours_vs_triton=vs_tri,
                       ours_vs_mamba=vs_m, triton_vs_mamba=tri_m if theirs is not None else None)
            harness.print_record(rec)
            records.append(rec)
            rows.append((f"{b}x{d}x{L}x{n} {str(dtype)[6:]}", f"{vs_tri:.2e}",
                         "-" if vs_m is None else f"{vs_m:.2e}", "-" if vs_m is None else f"{tri_m:.2e}"))
            del t, dout, ours, ours_g, tri, tri_g
            torch.cuda.empty_cache()
    tables.append(("Real sizes: max relative difference over out and all gradients",
                   ("shape", "ours vs triton", "ours vs mamba", "triton vs mamba"), rows))


# ----------------------------------------------------------------------------- bench


def _floors(b, d, L, n, dtype):
    elem = 2 if dtype == torch.bfloat16 else 4
    mufu = b * d * L * n / MUFU_EX2_PER_S * 1e3
    mem = (4 * b * d * L * elem + 2 * b * n * L * elem) / COPY_BPS * 1e3
    return mufu, mem


def _timing_case(b, d, L, n, dtype):
    """Inputs of a timed shape (no initial state: mamba_ssm takes none), the output gradient,
    and leaf copies of the inputs for the forward + backward timings."""
    t = inputs(b, d, L, n, dtype)
    t.pop("initial_state")
    dout = torch.randn(b, d, L, device="cuda").to(dtype)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
    return t, dout, leaves


def _record_error(rec, name, e):
    rec[f"error_{name}"] = repr(e)[:300]
    traceback.print_exc()


def _time_fwd_bwd(rec, name, fn, leaves, dout, **kw):
    """``rec["fwdbwd_ms_<name>"]`` (do_bench median) and ``rec["fwdbwd_kernel_ms_<name>"]``
    (torch.profiler) of fn's forward + backward on ``leaves``; an error is recorded instead."""
    def step():
        call(fn, leaves, **kw).backward(dout)

    try:
        rec[f"fwdbwd_ms_{name}"] = harness.cuda_ms(step, grad_to_none=list(leaves.values()))
        rec[f"fwdbwd_kernel_ms_{name}"] = harness.kernel_ms(step)
    except Exception as e:  # noqa: BLE001
        _record_error(rec, name, e)


def section_bench(records, tables, quick):
    theirs = mamba_scan()
    rows = []
    for (b, d, L, n), dtype in itertools.product((SHAPES[:1] if quick else SHAPES), (torch.bfloat16, torch.float32)):
        t, dout, leaves = _timing_case(b, d, L, n, dtype)
        fns = {f"cuda_{fl}{bl}": (cuda.selective_scan_cuda, dict(config=cuda.CudaScanConfig(fl, bl)))
               for fl, bl in dict.fromkeys([(x, x) for x in LAYOUTS] + PAIRS)}
        fns["triton"] = (triton_scan(), {})
        if theirs is not None:
            fns["mamba"] = (theirs, {})
        rec = dict(section="bench", shape=(b, d, L, n), dtype=str(dtype))
        rec["mufu_floor_ms"], rec["mem_floor_ms"] = _floors(b, d, L, n, dtype)
        for name, (fn, kw) in fns.items():
            try:
                with torch.no_grad():
                    fwd = lambda: call(fn, t, **kw)  # noqa: E731
                    rec[f"fwd_ms_{name}"] = harness.cuda_ms(fwd)
                    rec[f"fwd_kernel_ms_{name}"] = harness.kernel_ms(fwd)
            except Exception as e:  # noqa: BLE001
                _record_error(rec, name, e)
                continue
            _time_fwd_bwd(rec, name, fn, leaves, dout, **kw)
        harness.print_record(rec)
        records.append(rec)
        ours = [k for k in fns if k.startswith("cuda_")]
        for kind in ("fwd", "fwdbwd"):
            for timer in ("ms", "kernel_ms"):
                got = {k: rec.get(f"{kind}_{timer}_{k}") for k in fns}
                best = min((k for k in ours if got[k] is not None), key=lambda k: got[k], default=None)
                m, tr = got.get("mamba"), got.get("triton")
                bo = got.get(best) if best else None
                floor = rec["mufu_floor_ms"] if kind == "fwd" else None
                rows.append((f"{b}x{d}x{L}x{n} {str(dtype)[6:]}", kind, "wall" if timer == "ms" else "kernel",
                             f"{bo:.3f} ({best[5:]})" if bo else "-", f"{tr:.3f}" if tr else "-",
                             f"{m:.3f}" if m else "-", f"{m / bo:.2f}x" if m and bo else "-",
                             f"{tr / bo:.2f}x" if tr and bo else "-",
                             f"{floor / bo:.0%}" if floor and bo else "-"))
        t = leaves = dout = None  # free before the next shape (the timers' closures hold the names)
        torch.cuda.empty_cache()
    tables.append(("Timing, ms (ours: the best layout pair, named)",
                   ("shape", "pass", "time", "ours", "triton", "mamba_ssm", "mamba/ours", "triton/ours",
                    "MUFU floor/ours"), rows))


def section_compiled(records, tables, quick):
    """The scan under ``torch.compile`` (inductor, fullgraph), forward + backward: the public
    op with ``backend="cuda"`` (the compiled op's CUDA entry) and ``"triton"`` (what the
    compiled op ran before it had one), beside the eager CUDA call and mamba_ssm."""
    from mimetic.ops import selective_scan

    theirs = mamba_scan()
    rows = []
    for (b, d, L, n), dtype in itertools.product((SHAPES[:1] if quick else SHAPES), (torch.bfloat16, torch.float32)):
        _, dout, leaves = _timing_case(b, d, L, n, dtype)
        fns = {"eager_cuda": lambda *a, **kw: selective_scan(*a, **kw, backend="cuda")}
        for backend in ("cuda", "triton"):
            fns[f"compiled_{backend}"] = torch.compile(
                lambda *a, _b=backend, **kw: selective_scan(*a, **kw, backend=_b), fullgraph=True)
        if theirs is not None:
            fns["mamba"] = theirs
        rec = dict(section="compiled", shape=(b, d, L, n), dtype=str(dtype))
        for name, fn in fns.items():
            _time_fwd_bwd(rec, name, fn, leaves, dout)
        harness.print_record(rec)
        records.append(rec)
        for timer in ("ms", "kernel_ms"):
            got = {k: rec.get(f"fwdbwd_{timer}_{k}") for k in fns}
            c, tr, e, m = (got.get(k) for k in ("compiled_cuda", "compiled_triton", "eager_cuda", "mamba"))
            rows.append((f"{b}x{d}x{L}x{n} {str(dtype)[6:]}", "wall" if timer == "ms" else "kernel",
                         *(f"{v:.3f}" if v else "-" for v in (c, tr, e, m)),
                         f"{tr / c:.2f}x" if tr and c else "-", f"{m / c:.2f}x" if m and c else "-"))
        leaves = dout = fns = None
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    tables.append(("Under torch.compile, forward + backward, ms",
                   ("shape", "time", "compiled cuda", "compiled triton", "eager cuda", "mamba_ssm",
                    "triton/cuda", "mamba/compiled cuda"), rows))


def print_resources(direction: str, name: str, layout) -> None:
    """ptxas' registers / spills of an extra layout (float32 and bfloat16), compiled for this
    GPU (or sm_90 without one)."""
    arch = _cuda_rtc.device_arch(torch.device("cuda")) if torch.cuda.is_available() else "sm_90"
    for code in (0, 1):
        spec = cuda.Spec(direction, code, code, layout, cuda.state_group(direction, 16))
        res = _cuda_rtc.ptxas_resources(cuda.compiled(spec, arch).log)
        print(f"extra layout {direction} {name} {layout} dtype code {code}: {res}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sections", default="compile,check,bench")
    ap.add_argument("--quick", action="store_true", help="first shapes only")
    ap.add_argument("--shapes", default=None, metavar="I,J,...",
                    help="1-based indices into SHAPES the check and bench sections run (default: all), "
                         "e.g. 3,4 for the very-many-row and few-row shapes")
    ap.add_argument("--layouts", default=None,
                    help="comma-separated layout names the check and bench sections run (default: all)")
    ap.add_argument("--extra-layout", action="append", default=[], metavar="DIR:NAME=CL,TL,KX,W,MB[,SI]",
                    help="a layout to try that the package does not ship (DIR fwd or bwd; the fields of "
                         "cuda.Layout), added for this run only; repeatable. Its ptxas report is printed "
                         "(spills show there); time it with --layouts / --pairs")
    ap.add_argument("--pairs", default=None,
                    help="comma-separated FWD/BWD layout pairs the bench section adds, e.g. A/A2k8")
    args = ap.parse_args()
    for spec in args.extra_layout:
        try:
            direction, rest = spec.split(":", 1)
            name, fields = rest.split("=", 1)
            layout = cuda.Layout(*(int(v) for v in fields.split(",")))
        except (ValueError, TypeError) as e:
            ap.error(f"--extra-layout {spec!r}: {e}")
        if direction not in ("fwd", "bwd"):
            ap.error(f"--extra-layout {spec!r}: DIR must be fwd or bwd")
        (cuda.FWD_LAYOUTS if direction == "fwd" else cuda.BWD_LAYOUTS)[name] = layout
        print_resources(direction, name, layout)
    if args.pairs:
        global PAIRS
        PAIRS = [tuple(p.split("/")) for p in args.pairs.split(",")]
        for p in PAIRS:
            if len(p) != 2:
                ap.error(f"--pairs takes FWD/BWD layout names, got {'/'.join(p)!r}")
            try:
                cuda.CudaScanConfig(*p).check(need_grad=True)
            except ValueError as e:
                ap.error(str(e))
    if args.shapes:
        global SHAPES
        try:
            picked = [SHAPES[int(i) - 1] for i in args.shapes.split(",")]
        except (ValueError, IndexError):
            ap.error(f"--shapes {args.shapes!r}: 1-based indices into {SHAPES}")
        SHAPES = picked
    if args.layouts:
        global LAYOUTS
        LAYOUTS = args.layouts.split(",")
        unknown = sorted(set(LAYOUTS) - set(cuda.FWD_LAYOUTS))
        if unknown:
            ap.error(f"unknown layouts {unknown}; valid: {sorted(cuda.FWD_LAYOUTS)}")
    torch.backends.cuda.matmul.allow_tf32 = False
    info = harness.env_info("cuda", packages=("triton", "mamba_ssm"))
    records, tables = [], []
    for section in args.sections.split(","):
        t0 = time.perf_counter()
        if section == "compile":
            section_compile(records, tables)
        elif section == "check":
            section_check(records, tables, args.quick)
        elif section == "bench":
            section_bench(records, tables, args.quick)
        elif section == "compiled":
            section_compiled(records, tables, args.quick)
        else:
            raise SystemExit(f"unknown section {section!r}")
        print(f"section {section}: {time.perf_counter() - t0:.1f} s", flush=True)
        _write(args.out, info, records, tables)   # after each section: a later timeout keeps it


def _write(out, info, records, tables):
    harness.write_results(out, "issue16_cuda_scan", info, records, tables=tables)
    print(open(os.path.join(out, "issue16_cuda_scan.md")).read(), flush=True)


if __name__ == "__main__":
    main()
