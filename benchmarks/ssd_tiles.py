"""Tile sizes of the Triton SSD kernels: the forward + backward of ``ssd_scan_triton`` at the
Mamba-2 layer's shape, once per (row block, warps) pair, with each kernel's GPU time.

The SSD kernels run at one fixed tiling per matmul precision (``ssd.triton.BLOCK_M`` rows a
block for half operands, ``BLOCK_M_F32`` for exact float32 ones, ``BLOCK_WARPS`` warps a
program), chosen early and never tuned on Hopper, while mamba_ssm autotunes its
chunk kernels and is ahead in kernel time (benchmarks/RESULTS.md, issue 16). This measures
what other tilings give before anything is changed: per configuration the wall time
(``do_bench`` median), the kernel time (torch.profiler) and its heaviest kernels, and the
largest difference of the output and the gradients from the current tiling's (a tiling
that is faster but wrong shows here).

    python benchmarks/ssd_tiles.py --out DIR            # GPU
    TRITON_INTERPRET=1 python benchmarks/ssd_tiles.py --smoke --out DIR   # CPU: the script runs
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from mimetic.ops.ssd import triton as ssd

sys.path.insert(0, str(Path(__file__).parent))
from harness import cuda_ms, env_info, profile_totals  # noqa: E402

CONFIGS = [(64, 4), (32, 4), (64, 8), (128, 8), (32, 2), (128, 4), (32, 8), (16, 4)]   # (rows, warps)


def tilings(dtype, configs):
    """(rows, warps, float32 matmul precision) to time for ``dtype``, its default first (the
    baseline of the diffs); float32 also at its default tiling with tf32x3 matmuls."""
    default = (ssd.BLOCK_M_F32 if dtype == torch.float32 else ssd.BLOCK_M, ssd.BLOCK_WARPS)
    rest = [c for c in configs if c != default]
    precision = ssd._f32_precision(True, *default)   # the default's, torch's setting resolved
    if dtype != torch.float32:
        return [(*c, precision) for c in [default] + rest]
    rest = [c for c in rest if c[0] <= 32]   # 64 rows and more spill (460 ms at 64 x 4 on an H100)
    other = "tf32x3" if precision == "ieee" else "ieee"
    # (tf32x3 runs only at 32 rows and 4 warps: the launcher takes "ieee" elsewhere.)
    return [(*default, precision), (*default, other)] + [(*c, precision) for c in rest]


def problem(batch, L, H, P, N, G, dtype, device, seed=0):
    """Inputs of the Mamba2 layer's scan (z gate, D, dt bias, softplus) and an output gradient."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    t = dict(x=rnd(batch, L, H, P), dt=rnd(batch, L, H, scale=0.5), A=-torch.rand(H, generator=gen).add(0.5).to(device),
             B=rnd(batch, L, G, N, scale=N ** -0.5), C=rnd(batch, L, G, N, scale=N ** -0.5),
             D=torch.ones(H, device=device), z=rnd(batch, L, H, P),
             dt_bias=torch.rand(H, generator=gen).to(device) - 4.0)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}
    return leaves, rnd(batch, L, H, P)


def ours(leaves, chunk):
    return ssd.ssd_scan_triton(**leaves, chunk_size=chunk, dt_softplus=True)


def peer():
    """mamba_ssm's scan as ``ours`` is called (None if mamba_ssm is not installed)."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # noqa: BLE001 -- the peer is optional
        return None
    return lambda t, chunk: mamba_chunk_scan_combined(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, D=t["D"],
                                                      z=t["z"], dt_bias=t["dt_bias"], dt_softplus=True)


def fwd_bwd(leaves, dout, chunk, scan=ours):
    for v in leaves.values():
        v.grad = None
    y = scan(leaves, chunk)
    y.backward(dout)
    return y.detach(), {k: v.grad for k, v in leaves.items()}


def time_step(rec, fn):
    """Wall ms (do_bench median), kernel ms and the heaviest kernels of one step, into ``rec``."""
    rec["wall_ms"] = cuda_ms(fn, warmup=5, rep=40)
    totals = profile_totals(fn, iters=5, top=10)
    rec["kernel_ms"] = totals["kernel_ms"] / 5
    rec["top"] = [{**k, "ms": k["ms"] / 5} for k in totals["top"]]


def max_rel(a, b) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, TRITON_INTERPRET=1)")
    ap.add_argument("--dtypes", default="bfloat16,float32", help="GPU dtypes to time, in order")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        shape, chunk, dtypes, configs = (1, 150, 4, 16, 16, 1), 64, (torch.float32,), [(32, 4), (16, 4)]
    else:
        shape, chunk, configs = (8, 2048, 24, 64, 128, 1), 256, CONFIGS
        dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    default = (ssd.BLOCK_M, ssd.BLOCK_M_F32, ssd.BLOCK_WARPS, ssd.F32_PRECISION)
    records = []
    try:
        for dtype in dtypes:
            ssd.BLOCK_M, ssd.BLOCK_M_F32, ssd.BLOCK_WARPS, ssd.F32_PRECISION = default   # tilings() reads them
            leaves, dout = problem(*shape, dtype=dtype, device=device)
            base = None
            for bm, warps, precision in tilings(dtype, configs):
                ssd.BLOCK_M = ssd.BLOCK_M_F32 = bm
                ssd.BLOCK_WARPS, ssd.F32_PRECISION = warps, precision
                rec = {"shape": shape, "chunk": chunk, "dtype": str(dtype), "block_m": bm, "warps": warps,
                       "f32_precision": precision if dtype == torch.float32 else "-"}
                try:
                    y, grads = fwd_bwd(leaves, dout, chunk)
                    if base is None:
                        base = (y, grads)
                    rec["max_rel_diff"] = max(max_rel(y, base[0]),
                                              *(max_rel(g, base[1][k]) for k, g in grads.items()))
                    if not args.smoke:
                        time_step(rec, lambda: fwd_bwd(leaves, dout, chunk))
                except Exception as e:  # noqa: BLE001 -- a tiling that does not compile or run is a result
                    rec["error"] = repr(e)[:300]
                records.append(rec)
                print(json.dumps({k: v for k, v in rec.items() if k != "top"}), flush=True)
            if not args.smoke and (theirs := peer()) is not None:
                y, grads = fwd_bwd(leaves, dout, chunk, theirs)
                rec = {"shape": shape, "chunk": chunk, "dtype": str(dtype), "block_m": "mamba_ssm", "warps": "-",
                       "f32_precision": "-",
                       "max_rel_diff": max(max_rel(y, base[0]), *(max_rel(g, base[1][k]) for k, g in grads.items()))}
                time_step(rec, lambda: fwd_bwd(leaves, dout, chunk, theirs))
                records.append(rec)
                print(json.dumps({k: v for k, v in rec.items() if k != "top"}), flush=True)
    finally:
        ssd.BLOCK_M, ssd.BLOCK_M_F32, ssd.BLOCK_WARPS, ssd.F32_PRECISION = default
    Path(args.out).mkdir(parents=True, exist_ok=True)
    info = env_info(device)
    Path(args.out, "ssd_tiles.json").write_text(json.dumps({"info": info, "records": records}, indent=1))
    print("\n| dtype | BLOCK_M | warps | f32 matmuls | wall ms | kernel ms | max rel diff |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        print(f"| {r['dtype'].split('.')[-1]} | {r['block_m']} | {r['warps']} | {r['f32_precision']} | "
              f"{r.get('wall_ms', float('nan')):.3f} | "
              f"{r.get('kernel_ms', float('nan')):.3f} | {r.get('max_rel_diff', float('nan')):.1e} |"
              + (f" {r['error'][:60]}" if "error" in r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
