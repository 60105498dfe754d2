"""A prototype of the SSD backward's dC kernel, measured against the one in
``mimetic.ops.ssd.triton`` before it may replace it (issue 16: our SSD backward spends
17.4 ms of a 24-layer Mamba-2 LM step in ``_ssd_bwd_dc_kernel``, mamba_ssm 3.6-4.8 ms a
kernel).

``_ssd_bwd_dc_kernel`` loops heads outside and column blocks j inside, so per (head, j) it
forms C_i . B_j (an N-wide dot) and adds mt B_j into dC (another), although neither B, C
nor the sum over the heads of a group depend on the head. This one loops j outside: C_i .
B_j once per j, the heads' mt summed in float32 and multiplied by B_j once, so per j a
program does HEADS P-wide dots and two N-wide ones instead of HEADS of each. The
log-decay pair sums (da) need each head's running row sum over earlier j: kept as one
(heads, rows) register tile. Same inputs, same outputs (sterm, da_pairs, dC partial sums).

    TRITON_INTERPRET=1 python benchmarks/ssd_dc_prototype.py --check   # CPU: small shapes
    python benchmarks/ssd_dc_prototype.py --out DIR                    # GPU: check, then time

On the GPU it checks both kernels' outputs against each other at the DESIGN shape and a
few odd ones, then times them (``do_bench`` median and torch.profiler kernel time) at
batch 8, length 2048, 24 heads of 64, d_state 128, one group, chunk 256, bf16 and fp32.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from mimetic.ops.ssd import triton as ssd

sys.path.insert(0, str(Path(__file__).parent))


@triton.jit
def _ssd_bwd_dc_merged_kernel(x_ptr, dy_ptr, w_ptr, cs_ptr, B_ptr, C_ptr, sin_ptr, dC_ptr,
                              sterm_ptr, da_ptr,
                              L, H, P, N, Q, heads_per_group, n_chunks, G, n_splits,
                              s_x_b, s_x_l, s_y_b, s_y_l, s_b_b, s_b_l,
                              DOT_F32: tl.constexpr, HEADS: tl.constexpr, HP2: tl.constexpr,
                              BM: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr):
    """``_ssd_bwd_dc_kernel``'s outputs with the column blocks outside the heads."""
    pid = tl.program_id(0)
    c = tl.program_id(1)
    r = tl.program_id(2)
    b = (pid // (G * n_splits)).to(tl.int64)
    g = (pid // n_splits) % G
    split = pid % n_splits
    offs_m = tl.arange(0, BM)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    offs_h = tl.arange(0, HP2)
    t0 = c * Q
    mp = offs_p[None, :] < P
    mn = offs_n[None, :] < N
    ti = t0 + r * BM + offs_m
    mi = (r * BM + offs_m < Q) & (ti < L)
    C_i = tl.load(C_ptr + b * s_b_b + ti[:, None] * s_b_l + g * N + offs_n[None, :],
                  mask=mi[:, None] & mn, other=0.0)
    dC_sum = tl.zeros([BM, BN], dtype=tl.float32)
    # The state entering the chunk, per head: its term of dC and of the log-decay gradient.
    for k in range(0, HEADS):
        h = g * heads_per_group + split * HEADS + k
        row = (b * H + h) * n_chunks * Q
        cs_i = tl.load(cs_ptr + row + ti, mask=mi, other=0.0)
        dy_i = tl.load(dy_ptr + b * s_y_b + ti[:, None] * s_y_l + h * P + offs_p[None, :],
                       mask=mi[:, None] & mp, other=0.0)
        S = tl.load(sin_ptr + ((b * n_chunks + c) * H + h) * P * N + offs_p[:, None] * N
                    + offs_n[None, :], mask=(offs_p[:, None] < P) & mn, other=0.0)
        if DOT_F32:
            acc = tl.dot(dy_i.to(tl.float32), S, input_precision="ieee")
        else:
            acc = tl.dot(dy_i, S.to(dy_i.dtype))
        acc = acc * tl.where(mi, tl.exp(cs_i), 0.0)[:, None]
        tl.store(sterm_ptr + row + ti, tl.sum(acc * C_i.to(tl.float32), axis=1), mask=mi)
        dC_sum += acc
    carry = tl.zeros([HP2, BM], dtype=tl.float32)   # per head: sum of M_ij over earlier blocks j
    for s in range(0, (r + 1) * BM, BM):
        tj = t0 + s + offs_m
        mj = (s + offs_m < Q) & (tj < L)
        B_j = tl.load(B_ptr + b * s_b_b + tj[:, None] * s_b_l + g * N + offs_n[None, :],
                      mask=mj[:, None] & mn, other=0.0)
        if DOT_F32:
            CB = tl.dot(C_i.to(tl.float32), tl.trans(B_j.to(tl.float32)), input_precision="ieee")
        else:
            CB = tl.dot(C_i, tl.trans(B_j))
        causal = (ti[:, None] >= tj[None, :]) & mi[:, None] & mj[None, :]
        mt_sum = tl.zeros([BM, BM], dtype=tl.float32)
        for k in range(0, HEADS):
            h = g * heads_per_group + split * HEADS + k
            row = (b * H + h) * n_chunks * Q
            cs_i = tl.load(cs_ptr + row + ti, mask=mi, other=0.0)
            dy_i = tl.load(dy_ptr + b * s_y_b + ti[:, None] * s_y_l + h * P + offs_p[None, :],
                           mask=mi[:, None] & mp, other=0.0)
            w_j = tl.load(w_ptr + row + tj, mask=mj, other=0.0)
            cs_j = tl.load(cs_ptr + row + tj, mask=mj, other=0.0)
            x_j = tl.load(x_ptr + b * s_x_b + tj[:, None] * s_x_l + h * P + offs_p[None, :],
                          mask=mj[:, None] & mp, other=0.0)
            if DOT_F32:
                DX = tl.dot(dy_i.to(tl.float32), tl.trans(x_j.to(tl.float32)), input_precision="ieee")
            else:
                DX = tl.dot(dy_i, tl.trans(x_j))
            decay = tl.exp(tl.where(causal, cs_i[:, None] - cs_j[None, :], float("-inf")))
            mt = DX * decay * w_j[None, :]
            mt_sum += mt
            M = mt * CB
            mine = offs_h[:, None] == k
            before = tl.sum(tl.where(mine, carry, 0.0), axis=0)
            span = tl.cumsum(M, axis=1) - M + before[:, None]
            tl.store(da_ptr + ((b * H + h) * tl.num_programs(2) + r) * n_chunks * Q + tj,
                     tl.sum(tl.where(ti[:, None] >= tj[None, :], span, 0.0), axis=0), mask=mj)
            carry = tl.where(mine, carry + tl.sum(M, axis=1)[None, :], carry)
        if DOT_F32:
            dC_sum += tl.dot(mt_sum, B_j.to(tl.float32), input_precision="ieee")
        else:
            dC_sum += tl.dot(mt_sum.to(B_j.dtype), B_j)
    tl.store(dC_ptr + (((b * L + ti[:, None]) * n_splits + split) * G + g) * N + offs_n[None, :],
             dC_sum, mask=mi[:, None] & mn)


def dc_problem(batch, L, H, P, N, G, Q, dtype, device, seed=0):
    """The dC kernel's inputs as ``ssd._backward`` forms them (no z, D, bias, h0), from
    random Mamba-2-like inputs: (launch arguments, grid, heads, splits, n_rows, k)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

    x, B, C = rnd(batch, L, H, P), rnd(batch, L, G, N, scale=N ** -0.5), rnd(batch, L, G, N, scale=N ** -0.5)
    dt = (torch.rand(batch, L, H, generator=gen) * 0.1 + 0.001).to(device=device, dtype=dtype)
    A = -torch.rand(H, generator=gen).add(0.5).to(device)
    dy = rnd(batch, L, H, P)
    k = ssd._Launch(x, dt, A, B, C, Q, None, False, (0.0, float("inf")))
    w, cs, _, sin, _ = ssd._forward_states(k, x, dt, A, B, None, False, None)
    heads = ssd._heads_per_program(H // G)
    splits = (H // G) // heads
    n_rows = triton.cdiv(k.Q, k.BM)
    grid = (k.batch * k.G * splits, k.nc, n_rows)
    args = (x, dy, w, cs, B, C, sin)
    return args, grid, heads, splits, n_rows, k


def outputs(problem):
    """Zeroed (dC_parts, sterm, da_pairs) for a problem (the kernels leave the da entries past
    a row block's columns unwritten, so both kernels' outputs start equal)."""
    (x, dy, w, cs, B, C, sin), grid, heads, splits, n_rows, k = problem
    return (torch.zeros(k.batch, k.L, splits, k.G, k.N, device=x.device, dtype=torch.float32),
            torch.zeros_like(w),
            torch.zeros(k.batch, k.H, n_rows, k.nc * k.Q, device=x.device, dtype=torch.float32))


def launchers(problem):
    """{name: a launch of that kernel into its own preallocated outputs}, and those outputs."""
    args, grid, heads, splits, n_rows, k = problem
    kernels = {"current": (ssd._ssd_bwd_dc_kernel, dict(F32_PRECISION=k.f32_precision)),
               "merged": (_ssd_bwd_dc_merged_kernel, dict(HP2=triton.next_power_of_2(heads)))}
    outs = {name: outputs(problem) for name in kernels}

    def launch(name):
        kernel, extra = kernels[name]
        kernel[grid](*args, *outs[name], *k.dims, k.G, splits, *k.x_strides, *k.y_strides, *k.b_strides,
                     DOT_F32=k.dot_f32, HEADS=heads, BM=k.BM, BP=k.BP, BN=k.BN,
                     num_warps=ssd.BLOCK_WARPS, **extra)

    return {name: (lambda name=name: launch(name)) for name in kernels}, outs


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def check(shapes, dtype, device) -> list[dict]:
    """Both kernels on the same problems: the largest difference of each output, relative
    to the output's largest entry."""
    out = []
    for shape in shapes:
        fns, outs = launchers(dc_problem(*shape, dtype=dtype, device=device))
        for fn in fns.values():
            fn()
        errs = {name: max_rel(n, c) for name, n, c in zip(("dC", "sterm", "da"), outs["merged"], outs["current"])}
        out.append({"shape": shape, "dtype": str(dtype), **errs})
        print(f"check {shape} {dtype}: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()), flush=True)
    return out


def bench(dtype) -> dict:
    from harness import cuda_ms, kernel_ms

    shape = (8, 2048, 24, 64, 128, 1, 256)
    fns, _ = launchers(dc_problem(*shape, dtype=dtype, device="cuda"))
    rec = {"shape": shape, "dtype": str(dtype)}
    for name, fn in fns.items():
        rec[f"{name}_wall_ms"], rec[f"{name}_kernel_ms"] = cuda_ms(fn), kernel_ms(fn)
    print(f"bench {shape} {dtype}: " + ", ".join(f"{k} {v:.3f}" for k, v in rec.items() if k.endswith("ms")),
          flush=True)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only the comparison, at small shapes")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    interp = os.environ.get("TRITON_INTERPRET") == "1"
    device = "cpu" if interp else "cuda"
    # (batch, L, heads, headdim, d_state, groups, chunk): odd L, 2-4 row blocks a chunk
    # (BLOCK_M 64), several head splits, 2 groups
    small = [(1, 200, 4, 16, 16, 1, 128), (2, 150, 6, 16, 32, 2, 128), (1, 300, 16, 16, 16, 1, 256)]
    real = [(8, 2048, 24, 64, 128, 1, 256), (2, 1000, 48, 64, 64, 2, 128)]
    records = {"check": []}
    for dtype in ((torch.float32,) if interp else (torch.float32, torch.bfloat16)):
        records["check"] += check(small if (args.check or interp) else small + real, dtype, device)
    if not (args.check or interp):
        records["bench"] = [bench(dtype) for dtype in (torch.bfloat16, torch.float32)]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "ssd_dc_prototype.json").write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
