"""Issue 16 on the GPU: the run-time compiled CUDA causal conv1d (ops/causal_conv1d/cuda.py)
checked and timed against our Triton conv and causal_conv1d's ``causal_conv1d_fn``.

Sections (``--sections``, comma-separated; all by default):

* ``compile``: the compiler, compile time and ptxas report (registers, spills) of the
  layers' specializations (width 4, both layouts and directions, each dtype), and a
  second lookup from the disk cache.
* ``check``: forward and every gradient (x, weight, bias, initial states) against the
  float64 reference on small shapes: each layout as the layers pass x (plain, Mamba-1's
  channel slice, Mamba-2's transposed column slice, and unaligned views), each dtype,
  widths 2 to 4, odd L, with / without bias, SiLU, initial and final states; the Triton
  conv's error on the same case beside it; a CUDA-graph replay of forward + backward
  (out and dx bit for bit; dweight is summed by atomics, so only close). Then the layer
  shapes against Triton and causal_conv1d (relative differences).
* ``bench``: forward (no grad) and forward+backward at the layer shapes (batch 8,
  length 2048, d_model 768: Mamba-1 x (8, 1536, 2048) as the x half of in_proj's
  (8, 3072, 2048) output; Mamba-2 xBC (8, 1792, 2048) as columns 1536:3328 of in_proj's
  (8, 2048, 3352) output, dout channels last as the layer gives it), bf16 and fp32, in
  wall time (``do_bench`` median) and GPU kernel time (``harness.kernel_ms``, memsets
  included: our backward zeroes its dweight / dbias buffers): ours, Triton,
  causal_conv1d; then the channels-last run length (``cuda.TARGET_THREADS``) swept.
* ``tiles`` (not in the default list): other tiles under each layout's name
  (:data:`TILES`), kernel time at the layer shapes, bf16.

Writes ``OUT/issue16_cuda_conv.json`` (every number) and ``OUT/issue16_cuda_conv.md`` (the
tables); prints one JSON line per case as it goes.

Usage (device): python3 benchmarks/issue16_cuda_conv.py --out $OUT [--sections check] [--quick]
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
from mimetic.ops.causal_conv1d import cuda
from mimetic.ops.causal_conv1d.reference import causal_conv1d_ref

# (name, batch, dim, L, W, (offset, width) of x's columns in a (b, L, width) projection, or
# None: x is the first dim rows of a (b, 2 dim, L) projection)
LAYER_SHAPES = [("mamba1", 8, 1536, 2048, 4, None), ("mamba2", 8, 1792, 2048, 4, (1536, 3352))]
COPY_BPS = 4.28e12                         # the design note's H200 copy rate (read + write)
DEVICE = "cuda"                            # (a CPU dry run of the check sets "cpu" and the emulation)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_conv():
    from mimetic.ops.causal_conv1d.triton import causal_conv1d_triton

    return causal_conv1d_triton


def peer_conv():
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception as e:  # noqa: BLE001
        print("causal_conv1d unavailable:", repr(e), flush=True)
        return None

    def fn(x, weight, bias=None, activation=None, initial_states=None, return_final_states=False):
        return causal_conv1d_fn(x, weight, bias, initial_states=initial_states,
                                return_final_states=return_final_states, activation=activation)
    return fn


class Layer:
    """x as a layer passes it: a view of a larger projection (the leaf), plus dout in the
    layout the layer's next op gives it."""

    def __init__(self, layout, batch, dim, L, dtype, seed=0, cols=None):
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        r = lambda *s: torch.randn(*s, device=DEVICE, generator=g)  # noqa: E731
        self.layout, self.dim, self.cols = layout, dim, cols
        if layout == "mamba1":                  # x of in_proj's (b, 2 d_inner, L) output
            self.base = r(batch, 2 * dim, L).to(dtype)
            self.dout = r(batch, dim, L).to(dtype)
        elif layout in ("mamba2", "unaligned"):  # columns of in_proj's (b, L, d_in_proj) output
            off, width = cols or ((16, dim + 24) if layout == "mamba2" else (3, dim + 7))
            self.cols = (off, width)
            self.base = r(batch, L, width).to(dtype)
            self.dout = r(batch, L, dim).to(dtype).transpose(1, 2)
        else:
            self.base = r(batch, dim, L).to(dtype)
            self.dout = r(batch, dim, L).to(dtype)

    def view(self, base):
        if self.layout == "mamba1":
            return base[:, :self.dim]
        if self.layout in ("mamba2", "unaligned"):
            off, _ = self.cols
            return base[:, :, off:off + self.dim].transpose(1, 2)
        return base

    @property
    def x(self):
        return self.view(self.base)


def fwd_bwd(fn, layer, params, silu=True, final=False, dfinal=None):
    """(outputs, grads by name) of fn; x's gradient read back through the layer's view."""
    base = layer.base.detach().clone().requires_grad_(True)
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in params.items()}
    outs = fn(layer.view(base), leaves["weight"], bias=leaves["bias"], activation="silu" if silu else None,
              initial_states=leaves["initial_states"], return_final_states=final)
    outs = outs if isinstance(outs, tuple) else (outs,)
    grads = [layer.dout.to(outs[0].dtype)] + ([dfinal.to(outs[1].dtype)] if final else [])
    torch.autograd.backward(list(outs), grads)
    got = {"x": layer.view(base.grad)}
    got.update({k: v.grad for k, v in leaves.items() if v is not None})
    return outs, got


def _double(layer):
    twin = Layer.__new__(Layer)
    twin.__dict__.update(layer.__dict__)
    twin.base, twin.dout = layer.base.double(), layer.dout.double()
    return twin


# ----------------------------------------------------------------------------- compile


def section_compile(records, tables):
    comp = _cuda_rtc.find_compiler()
    info = dict(section="compile", compiler=None if comp is None else comp.kind,
                version=None if comp is None else comp.version, cache=str(_cuda_rtc.cache_dir()))
    harness.print_record(info)
    records.append(info)
    if comp is None:
        return
    arch = _cuda_rtc.device_arch(torch.device("cuda"))
    rows = []
    for direction, layout, code in itertools.product(("fwd", "bwd"), ("L", "CL"), cuda.DTYPE_CODES.values()):
        spec = cuda.Spec(direction, code, 4, layout)
        t0 = time.perf_counter()
        got = cuda.compiled(spec, arch)
        s = time.perf_counter() - t0
        res = _cuda_rtc.ptxas_resources(got.log)
        rec = dict(section="compile", spec=spec.name, seconds=round(s, 3), from_cache=got.from_cache, **res)
        harness.print_record(rec)
        records.append(rec)
        rows.append((spec.name, f"{s:.2f}", got.from_cache, res.get("registers"), res.get("spill_stores"),
                     res.get("spill_loads")))
    _cuda_rtc._MEMO.clear()
    again = cuda.compiled(cuda.Spec("fwd", 1, 4, "L"), arch)
    records.append(dict(section="compile", disk_cache_hit=again.from_cache))
    tables.append((f"Compile ({comp.kind} {comp.version}, {arch}; disk-cache hit after: {again.from_cache})",
                   ("spec", "s", "cached", "regs", "spill st", "spill ld"), rows))


# ----------------------------------------------------------------------------- check

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _params(dim, W, dtype, bias=True, h0=False, batch=1, seed=1):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=DEVICE, generator=g)  # noqa: E731
    return dict(weight=(0.5 * r(dim, W)).to(dtype), bias=r(dim).to(dtype) if bias else None,
                initial_states=r(batch, dim, W - 1).to(dtype) if h0 else None)


def _errors(fn, layer, params, silu, final):
    W = params["weight"].shape[1]
    b, d, _ = layer.x.shape
    dfinal = torch.randn(b, d, W - 1, device=DEVICE) if final else None
    ref, ref_g = fwd_bwd(causal_conv1d_ref, _double(layer),
                         {k: None if v is None else v.double() for k, v in params.items()}, silu, final,
                         None if dfinal is None else dfinal.double())
    got, got_g = fwd_bwd(fn, layer, params, silu, final, dfinal)
    errs = {f"out{i}": harness.rel_err(a, r) for i, (a, r) in enumerate(zip(got, ref))}
    errs.update({f"d{k}": harness.rel_err(got_g[k], ref_g[k]) for k in ref_g})
    return errs


def section_check(records, tables, quick):
    shapes = [(2, 24, 203, 4), (1, 300, 1029, 4), (2, 64, 2048, 3), (3, 16, 7, 2), (2, 40, 2, 4)]
    if quick:
        shapes = shapes[:2]
    features = [dict(), dict(bias=False), dict(silu=False), dict(h0=True), dict(h0=True, final=True)]
    cases = [(s, lay, dt, f) for s in shapes for lay in ("contiguous", "mamba1", "mamba2", "unaligned")
             for dt in DTYPES for f in (features if dt == torch.bfloat16 else features[:1])]
    rows, fails = [], 0
    for (b, d, L, W), lay, dtype, feat in cases:
        feat = dict(feat)
        silu, final = feat.pop("silu", True), feat.pop("final", False)
        layer = Layer(lay, b, d, L, dtype)
        params = _params(d, W, dtype, batch=b, **feat)
        name = f"{b}x{d}x{L}w{W} {lay} {str(dtype)[6:]} " + " ".join(
            [f"{k}={v}" for k, v in feat.items()] + ([] if silu else ["no_silu"]) + (["final"] if final else []))
        try:
            errs = _errors(cuda.causal_conv1d_cuda, layer, params, silu, final)
            terrs = _errors(triton_conv(), layer, params, silu, final)
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
    if torch.cuda.is_available():
        rows.append(_graph_check(records))
    tables.append((f"Check against the float64 reference ({fails} failed of {len(cases)})",
                   ("case", "result", "worst", "ours", "triton"), rows))
    _layer_size_check(records, tables)


def _graph_check(records):
    """Forward + backward captured in one CUDA graph, replayed on new inputs: out and dx
    as eager calls give them, bit for bit; dweight / dbias close (atomic sums)."""
    layer = Layer("mamba2", 2, 300, 600, torch.bfloat16)
    params = _params(300, 4, torch.bfloat16, h0=True, batch=2)
    base = layer.base.detach().clone().requires_grad_(True)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}

    def step():
        for t in (base, *leaves.values()):
            t.grad = None
        out = cuda.causal_conv1d_cuda(layer.view(base), leaves["weight"], leaves["bias"], activation="silu",
                                      initial_states=leaves["initial_states"])
        out.backward(layer.dout)
        return out.detach(), base.grad, {k: v.grad for k, v in leaves.items()}

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, dx, grads = step()
    fresh = Layer("mamba2", 2, 300, 600, torch.bfloat16, seed=5)
    with torch.no_grad():
        base.copy_(fresh.base)
    graph.replay()
    want, want_dx, want_g = step()
    same = torch.equal(out, want) and torch.equal(dx, want_dx)
    close = max(harness.rel_err(grads[k], want_g[k]) for k in want_g)
    ok = same and close < 1e-5
    records.append(dict(section="check", case="cuda graph replay", equal=same, grads_rel=close))
    return ("CUDA graph replay, fwd + bwd", "ok" if ok else "FAIL", "dw/db", f"{close:.1e}", "-")


def _layer_size_check(records, tables):
    theirs = peer_conv()
    rows = []
    for (name, b, d, L, W, cols), dtype in itertools.product(LAYER_SHAPES, (torch.bfloat16, torch.float32)):
        layer = Layer(name, b, d, L, dtype, cols=cols)
        params = _params(d, W, dtype)
        ours, ours_g = fwd_bwd(cuda.causal_conv1d_cuda, layer, params)
        tri, tri_g = fwd_bwd(triton_conv(), layer, params)
        diff = lambda a, ag, c, cg: max([harness.rel_err(a[0], c[0])]  # noqa: E731
                                        + [harness.rel_err(ag[k], cg[k]) for k in cg])
        vs_tri = diff(ours, ours_g, tri, tri_g)
        vs_p = tri_p = None
        if theirs is not None:
            pc, pc_g = fwd_bwd(theirs, layer, params)
            vs_p, tri_p = diff(ours, ours_g, pc, pc_g), diff(tri, tri_g, pc, pc_g)
        rec = dict(section="check_layer", layer=name, dtype=str(dtype), ours_vs_triton=vs_tri,
                   ours_vs_causal_conv1d=vs_p, triton_vs_causal_conv1d=tri_p)
        harness.print_record(rec)
        records.append(rec)
        fmt = lambda v: "-" if v is None else f"{v:.2e}"  # noqa: E731
        rows.append((f"{name} {b}x{d}x{L} {str(dtype)[6:]}", fmt(vs_tri), fmt(vs_p), fmt(tri_p)))
    tables.append(("Layer sizes: max relative difference over out and all gradients",
                   ("case", "ours vs triton", "ours vs causal_conv1d", "triton vs causal_conv1d"), rows))


# ----------------------------------------------------------------------------- bench


def _time(fn, layer, params, rec, name):
    base = layer.base.detach().clone().requires_grad_(True)
    leaves = [v.detach().clone().requires_grad_(True) for v in (params["weight"], params["bias"])]
    x = layer.x

    def fwd():
        return fn(x, params["weight"], params["bias"], activation="silu")

    def step():
        fn(layer.view(base), leaves[0], leaves[1], activation="silu").backward(layer.dout)

    with torch.no_grad():
        rec[f"fwd_ms_{name}"] = harness.cuda_ms(fwd)
        rec[f"fwd_kernel_ms_{name}"] = harness.kernel_ms(fwd, copies=True)
    rec[f"fwdbwd_ms_{name}"] = harness.cuda_ms(step, grad_to_none=[base, *leaves])
    rec[f"fwdbwd_kernel_ms_{name}"] = harness.kernel_ms(step, copies=True)


def section_bench(records, tables, quick):
    theirs = peer_conv()
    rows = []
    for (name, b, d, L, W, cols), dtype in itertools.product(LAYER_SHAPES, (torch.bfloat16, torch.float32)):
        layer = Layer(name, b, d, L, dtype, cols=cols)
        params = _params(d, W, dtype)
        es = torch.finfo(dtype).bits // 8
        rec = dict(section="bench", layer=name, shape=(b, d, L, W), dtype=str(dtype),
                   floor_fwd_ms=2 * b * d * L * es / COPY_BPS * 1e3, floor_bwd_ms=3 * b * d * L * es / COPY_BPS * 1e3)
        fns = {"cuda": cuda.causal_conv1d_cuda, "triton": triton_conv()}
        if theirs is not None:
            fns["causal_conv1d"] = theirs
        for fname, fn in fns.items():
            try:
                _time(fn, layer, params, rec, fname)
            except Exception as e:  # noqa: BLE001
                rec[f"error_{fname}"] = repr(e)[:300]
                traceback.print_exc()
        harness.print_record(rec)
        records.append(rec)
        for kind, timer in itertools.product(("fwd", "fwdbwd"), ("ms", "kernel_ms")):
            got = {k: rec.get(f"{kind}_{timer}_{k}") for k in fns}
            ours, tri, peer = got["cuda"], got["triton"], got.get("causal_conv1d")
            floor = rec["floor_fwd_ms"] + (rec["floor_bwd_ms"] if kind == "fwdbwd" else 0)
            f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
            rows.append((f"{name} {b}x{d}x{L} {str(dtype)[6:]}", kind, "wall" if timer == "ms" else "kernel",
                         f(ours), f(tri), f(peer), f"{peer / ours:.2f}x" if peer and ours else "-",
                         f"{tri / ours:.2f}x" if tri and ours else "-",
                         f"{floor / ours:.0%}" if ours else "-"))
        if not quick and name == "mamba2":
            _sweep_runs(layer, params, records, rows, f"{name} {b}x{d}x{L} {str(dtype)[6:]}")
        layer = params = None
        torch.cuda.empty_cache()
    tables.append(("Timing, ms (peer/ours > 1: ours faster; floor: the copy-rate bound of one pass)",
                   ("case", "pass", "time", "ours", "triton", "causal_conv1d", "peer/ours", "triton/ours",
                    "floor/ours"), rows))


def _sweep_runs(layer, params, records, rows, label):
    """Channels-last run length: kernel time for each TARGET_THREADS (both directions)."""
    saved = dict(cuda.TARGET_THREADS)
    try:
        for target in (1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 21):
            cuda.TARGET_THREADS.update(fwd=target, bwd=target)
            rec = dict(section="sweep_runs", case=label, target_threads=target)
            _time(cuda.causal_conv1d_cuda, layer, params, rec, "cuda")
            harness.print_record(rec)
            records.append(rec)
            rows.append((label, f"runs {target}", "kernel", f"{rec['fwd_kernel_ms_cuda']:.4f} fwd",
                         f"{rec['fwdbwd_kernel_ms_cuda']:.4f} fwdbwd", "-", "-", "-", "-"))
    finally:
        cuda.TARGET_THREADS.update(saved)


# Tiles to try under each layout's name, (direction, name): [Layout(...)], the shipped one first.
TILES = {
    ("fwd", "L"): [cuda.Layout(False, 1, 128, 1, 8), cuda.Layout(False, 1, 64, 1, 8), cuda.Layout(False, 1, 256, 1, 8),
                   cuda.Layout(False, 1, 128, 1, 16)],
    ("bwd", "L"): [cuda.Layout(False, 1, 128, 1, 8), cuda.Layout(False, 1, 64, 1, 8), cuda.Layout(False, 1, 256, 1, 8),
                   cuda.Layout(False, 1, 128, 1, 16)],
    ("fwd", "CL"): [cuda.Layout(True, 32, 4, 8, 4), cuda.Layout(True, 32, 4, 8, 2), cuda.Layout(True, 32, 4, 4, 4),
                    cuda.Layout(True, 32, 4, 8, 4, 4), cuda.Layout(True, 32, 4, 8, 8)],
    ("bwd", "CL"): [cuda.Layout(True, 32, 4, 4, 2, 4), cuda.Layout(True, 32, 4, 4, 2), cuda.Layout(True, 32, 4, 4, 4),
                    cuda.Layout(True, 32, 4, 2, 4), cuda.Layout(True, 32, 4, 2, 8), cuda.Layout(True, 32, 4, 8, 2)],
}


def section_tiles(records, tables):
    """Kernel time of each tile in TILES at the layer shapes (bf16), one direction at a
    time (the other keeps its shipped tile): forward alone for "fwd", forward + backward
    for "bwd"."""
    rows = []
    for (name, b, d, L, W, cols) in LAYER_SHAPES:
        layer = Layer(name, b, d, L, torch.bfloat16, cols=cols)
        params = _params(d, W, torch.bfloat16)
        lay = "CL" if name == "mamba2" else "L"
        for direction in ("fwd", "bwd"):
            shipped = cuda.LAYOUTS[direction][lay]
            want, want_g = fwd_bwd(cuda.causal_conv1d_cuda, layer, params)
            try:
                for tile in TILES[(direction, lay)]:
                    cuda.LAYOUTS[direction][lay] = tile
                    rec = dict(section="tiles", layer=name, direction=direction, tile=repr(tile))
                    try:
                        got, got_g = fwd_bwd(cuda.causal_conv1d_cuda, layer, params)
                        rec["rel_diff_vs_shipped"] = max([harness.rel_err(got[0], want[0])]
                                                         + [harness.rel_err(got_g[k], want_g[k]) for k in want_g])
                        _time(cuda.causal_conv1d_cuda, layer, params, rec, "cuda")
                    except Exception as e:  # noqa: BLE001
                        rec["error"] = repr(e)[:300]
                    harness.print_record(rec)
                    records.append(rec)
                    key = "fwd_kernel_ms_cuda" if direction == "fwd" else "fwdbwd_kernel_ms_cuda"
                    got = rec.get(key)
                    label = f"lc{tile.lc} lt{tile.lt} c{tile.c} s{tile.s} mb{tile.min_blocks}"
                    label += " (shipped)" if tile == shipped else ""
                    rows.append((f"{name} {b}x{d}x{L} bf16", direction, label,
                                 "-" if got is None else f"{got:.4f}",
                                 f"{rec.get('rel_diff_vs_shipped', float('nan')):.1e}"))
            finally:
                cuda.LAYOUTS[direction][lay] = shipped
    tables.append(("Tiles: kernel ms (fwd: forward alone; bwd: forward + backward)",
                   ("case", "direction", "tile", "kernel ms", "rel diff vs shipped"), rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sections", default="compile,check,bench")
    ap.add_argument("--quick", action="store_true", help="fewer check shapes, no run-length sweep")
    args = ap.parse_args()
    info = harness.env_info("cuda", packages=("triton", "causal_conv1d"))
    records, tables = [], []
    for section in args.sections.split(","):
        t0 = time.perf_counter()
        if section == "compile":
            section_compile(records, tables)
        elif section == "check":
            section_check(records, tables, args.quick)
        elif section == "bench":
            section_bench(records, tables, args.quick)
        elif section == "tiles":
            section_tiles(records, tables)
        else:
            raise SystemExit(f"unknown section {section!r}")
        print(f"section {section}: {time.perf_counter() - t0:.1f} s", flush=True)
        _write(args.out, info, records, tables)   # after each section: a later timeout keeps it


def _write(out, info, records, tables):
    harness.write_results(out, "issue16_cuda_conv", info, records, tables=tables)
    print(open(os.path.join(out, "issue16_cuda_conv.md")).read(), flush=True)


if __name__ == "__main__":
    main()
