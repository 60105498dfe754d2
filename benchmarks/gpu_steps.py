"""GPU micro-benchmark of the single-token decode-step ops, ours vs ``mamba_ssm``'s.

Decoding replays one CUDA graph per token, so what counts is each op's time inside a
graph, not its launch from Python. Each op is therefore captured ``--calls`` times in
one CUDA graph and the replay is timed (``triton.testing.do_bench`` median, divided by
the number of calls). The sizes are those of the decoding benchmark (gpu_decode.py):
d_model 768; Mamba-1 d_inner 1536, d_state 16, dt_rank 48; Mamba-2 24 heads of 64,
d_state 128, conv over 1792 channels; fp16 activations; batch 1 and 64.

Rows: the Mamba-1 SSM step as a layer runs it (ours: one kernel that also applies
dt_proj and forms A from A_log; mamba_ssm: the dt_proj matmul, A = -exp(A_log) and its
Triton step), with states in float32 and in fp16, and ours at several (BLOCK_D, warps)
tilings; the Mamba-2 SSD step; the conv step; the block's residual-add RMSNorm and the
Mamba-2 gated RMSNorm (z a slice of the input projection, as in the layer). Before
timing, each of ours is checked against mamba_ssm's result on the same inputs.

Usage (on the device):  python benchmarks/gpu_steps.py [--calls 50] [--out DIR]
Prints a table last; writes every number as JSON to DIR/gpu_steps.json and the table to
DIR/gpu_steps.md (benchmarks/harness.py).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

from harness import env_info, graph_us, markdown_table, print_record, rel_err, write_results
from mimetic.ops import causal_conv1d_update, rms_norm, selective_state_update, ssd_state_update


def compare(name, a, b):
    """Relative error of a against b, with b's norm and the largest difference, so that
    an exact match can be told from a degenerate one."""
    return {f"err_{name}": rel_err(a, b), f"norm_{name}": b.double().norm().item(),
            f"maxdiff_{name}": (a.double() - b.double()).abs().max().item()}


def measure(rec, ours, theirs, calls, pick=lambda out: out):
    """Into rec: ours vs theirs on the same inputs (``pick`` selects the compared output)
    when theirs exists, then each one's microseconds per call in a CUDA graph."""
    if theirs is not None:
        rec.update(compare("out", pick(ours()), pick(theirs())))
        rec["us_mamba"] = graph_us(theirs, calls)
    rec["us_ours"] = graph_us(ours, calls)


def report(rec, label, rows, details, ours_us=None, note="-"):
    """Record rec (JSON line, details) and its table row."""
    details.append(rec)
    print_record(rec)
    rows.append((label, rec["us_ours"] if ours_us is None else ours_us, rec.get("us_mamba"), note))


def mamba1_step(batch, calls, theirs, rows, details):
    from mimetic.ops.selective_scan import step_triton

    d, n, r = 1536, 16, 48
    g = torch.Generator(device="cuda").manual_seed(batch)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    x, z = rnd(batch, d).half(), rnd(batch, d).half()
    low, W = rnd(batch, r).half(), (0.1 * rnd(d, r)).half()
    B, C = rnd(batch, n).half(), rnd(batch, n).half()
    A_log, D, bias = 0.5 * rnd(d, n), rnd(d), 0.3 * rnd(d) - 2.0
    for sdt in (torch.float32, torch.float16):
        state0 = rnd(batch, d, n).to(sdt)
        s_ours, s_theirs = state0.clone(), state0.clone()

        def ours():
            return selective_state_update(s_ours, x, low, A_log, B, C, D, z=z, dt_bias=bias,
                                          dt_softplus=True, A_is_log=True, dt_proj_weight=W)

        def mamba():  # what mamba_ssm's Mamba.step runs for the same
            dt = F.linear(low, W)
            A = -torch.exp(A_log.float())
            return theirs(s_theirs, x, dt, A, B, C, D, z=z, dt_bias=bias, dt_softplus=True)

        rec = dict(op="mamba1_step", batch=batch, state=str(sdt))
        if theirs is not None:
            rec.update(compare("out", ours(), mamba()))
            rec.update(compare("state", s_ours, s_theirs))
            rec["us_mamba"] = graph_us(mamba, calls)
        for tiling in (None, (64, 4), (128, 4), (128, 8), (256, 8)):
            step_triton.BLOCK_OVERRIDE = tiling
            rec[f"us_ours_{tiling}"] = graph_us(ours, calls)
        step_triton.BLOCK_OVERRIDE = None
        best = min((k for k in rec if k.startswith("us_ours_")), key=rec.get)
        report(rec, f"mamba1 ssm step b{batch} state {str(sdt)[6:]}", rows, details,
               ours_us=rec["us_ours_None"], note=f"{best[8:]} {rec[best]:.2f}")


def mamba2_step(batch, calls, theirs, rows, details):
    H, P, N = 24, 64, 128
    g = torch.Generator(device="cuda").manual_seed(batch)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    x, dt = rnd(batch, H, P).half(), rnd(batch, H).half()
    B, C = rnd(batch, 1, N).half(), rnd(batch, 1, N).half()
    A_log, D, bias = 0.5 * rnd(H), rnd(H), 0.3 * rnd(H) - 2.0
    for sdt in (torch.float32, torch.float16):
        state0 = rnd(batch, H, P, N).to(sdt)
        s_ours, s_theirs = state0.clone(), state0.clone()

        def ours():
            return ssd_state_update(s_ours, x, dt, A_log, B, C, D=D, dt_bias=bias,
                                    dt_softplus=True, A_is_log=True)

        def mamba():  # mamba_ssm's Mamba2.step: A expanded per (head, p, n), one kernel
            A = -torch.exp(A_log.float())
            return theirs(s_theirs, x, dt[:, :, None].expand(-1, -1, P),
                          A[:, None, None].expand(H, P, N), B[:, 0], C[:, 0],
                          D[:, None].expand(H, P), dt_bias=bias[:, None].expand(H, P),
                          dt_softplus=True)

        rec = dict(op="mamba2_step", batch=batch, state=str(sdt))
        measure(rec, ours, mamba if theirs is not None else None, calls)
        report(rec, f"mamba2 ssd step b{batch} state {str(sdt)[6:]}", rows, details)


def conv_step(batch, calls, rows, details):
    try:
        from causal_conv1d import causal_conv1d_update as theirs
    except Exception:  # noqa: BLE001
        theirs = None
    for dim, W in ((1536, 4), (1792, 4)):
        g = torch.Generator(device="cuda").manual_seed(dim)
        wide = torch.randn(batch, 2 * dim, device="cuda", generator=g).half()
        x = wide[:, :dim]  # a slice of the input projection, as the layers pass it
        w = torch.randn(dim, W, device="cuda", generator=g).half()
        b = torch.randn(dim, device="cuda", generator=g).half()
        s0 = torch.randn(batch, dim, W - 1, device="cuda", generator=g).half()
        s_ours = s0.clone()
        rec = dict(op="conv_step", batch=batch, dim=dim)
        ours = lambda: causal_conv1d_update(x, s_ours, w, b, activation="silu")  # noqa: E731
        mamba = None
        if theirs is not None:
            # causal_conv1d's state holds the last W inputs (ours keeps W - 1).
            s_theirs = torch.cat([torch.zeros_like(s0[..., :1]), s0], dim=-1)
            mamba = lambda: theirs(x, s_theirs, w, b, "silu")  # noqa: E731
        measure(rec, ours, mamba, calls)
        report(rec, f"conv step b{batch} dim {dim}", rows, details)


def norms(batch, calls, rows, details):
    try:
        from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
    except Exception:  # noqa: BLE001
        rms_norm_fn = rmsnorm_fn = None
    g = torch.Generator(device="cuda").manual_seed(batch)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    h, res, w = rnd(batch, 768).half(), rnd(batch, 768), (1 + 0.1 * rnd(768)).half()
    rec = dict(op="add_rms_norm", batch=batch)
    ours = lambda: rms_norm(h, w, residual=res, prenorm=True, residual_in_fp32=True)  # noqa: E731
    mamba = None if rms_norm_fn is None else (
        lambda: rms_norm_fn(h, w, None, residual=res, prenorm=True, residual_in_fp32=True,
                            eps=1e-5))
    measure(rec, ours, mamba, calls, pick=lambda out: out[0])  # (normed, residual)
    report(rec, f"add+rmsnorm b{batch} 768", rows, details)

    proj = rnd(batch, 2 * 1536 + 2 * 128 + 24).half()
    z, y = proj[:, :1536], rnd(batch, 1536).half()
    wg = (1 + 0.1 * rnd(1536)).half()
    rec = dict(op="gated_rms_norm", batch=batch)
    ours = lambda: rms_norm(y, wg, z=z, group_size=1536)  # noqa: E731
    mamba = None if rmsnorm_fn is None else (
        lambda: rmsnorm_fn(y, wg, None, z=z, eps=1e-5, group_size=1536, norm_before_gate=False))
    measure(rec, ours, mamba, calls)
    report(rec, f"gated rmsnorm b{batch} 1536", rows, details)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=50, help="calls captured per graph")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    info = env_info("cuda", packages=("mamba_ssm", "causal_conv1d"), calls=args.calls)
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update as theirs
    except Exception as e:  # noqa: BLE001
        theirs, info["mamba_ssm_error"] = None, repr(e)
    print_record(info)
    rows, details = [], []
    with torch.inference_mode():
        for batch in (1, 64):
            mamba1_step(batch, args.calls, theirs, rows, details)
            mamba2_step(batch, args.calls, theirs, rows, details)
            conv_step(batch, args.calls, rows, details)
            norms(batch, args.calls, rows, details)
    head = ("op", "us ours (default)", "us mamba_ssm", "best tiling of ours")
    table = [(name, f"{ours:.2f}", None if theirs_us is None else f"{theirs_us:.2f}", best)
             for name, ours, theirs_us, best in rows]
    write_results(args.out, "gpu_steps", info, details, table=(head, table))
    print("\n" + markdown_table(head, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
