"""Registers and spills of the SSD Triton kernels for sm_90, without a GPU.

Compiles each kernel with ``triton.compile`` for ``cuda:90`` and runs the ptxas bundled
with Triton (``ptxas-blackwell -v -arch=sm_90a``) on the PTX: registers per thread and
spill-store bytes per thread, for bf16 inputs at Mamba-2's sizes (P=64, N=128), at each
(row block, warps) configuration given. Offline numbers: they say where a kernel spills,
not how fast it runs (benchmarks/logs/gpu_kernel_log.md, "SSD kernels offline").

Usage:  python benchmarks/ptxas_report.py [--configs 64x4,32x8] [--heads 8]
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget

from harness import markdown_table
from mimetic.ops.ssd import triton as ssd

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                     "ptxas-blackwell")
HALF_POINTERS = {"x_ptr", "dy_ptr", "B_ptr", "C_ptr", "dx_ptr", "z_ptr", "out_ptr",
                 "dout_ptr", "dz_ptr"}


def registers_and_spills(fn, constexprs: dict, num_warps: int) -> tuple[int, int]:
    """(registers per thread, spill-store bytes per thread) of one compiled kernel."""
    params = list(inspect.signature(fn.fn).parameters)
    signature = {}
    for p in params:
        if p in constexprs:
            signature[p] = "constexpr"
        elif p.endswith("_ptr"):
            signature[p] = "*bf16" if p in HALF_POINTERS else "*fp32"
        else:
            signature[p] = "fp32" if p in ("lo", "hi") else "i32"
    src = triton.compiler.ASTSource(
        fn=fn, signature=signature,
        constexprs={(params.index(k),): v for k, v in constexprs.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=num_warps))
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "k.ptx")
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        res = subprocess.run([PTXAS, "-v", "-arch=sm_90a", ptx, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True)
    info = res.stderr + res.stdout
    regs = int(re.search(r"Used (\d+) registers", info).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", info).group(1))
    return regs, spills


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="64x4,32x4,64x8,32x8", help="BLOCK_MxWARPS list")
    ap.add_argument("--heads", type=int, default=8, help="heads per backward program")
    args = ap.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    rows = []
    for cfg in args.configs.split(","):
        bm, warps = map(int, cfg.split("x"))
        tiles = dict(BM=bm, BP=64, BN=128)
        kernels = [
            ("_ssd_scan_kernel", ssd._ssd_scan_kernel,
             dict(HAS_D=True, D_PER_P=False, HAS_Z=False, GATE_BWD=False, DOT_F32=False,
                  F32_PRECISION="ieee", **tiles)),
            ("_ssd_bwd_dx_kernel", ssd._ssd_bwd_dx_kernel,
             dict(HAS_D=True, DOT_F32=False, F32_PRECISION="ieee", HEADS=args.heads, **tiles)),
            ("_ssd_bwd_dc_kernel", ssd._ssd_bwd_dc_kernel,
             dict(DOT_F32=False, F32_PRECISION="ieee", HEADS=args.heads, **tiles)),
        ]
        for name, fn, consts in kernels:
            regs, spills = registers_and_spills(fn, consts, warps)
            rows.append((name, f"{bm} x {warps}", regs, spills))
    print(markdown_table(("kernel", "BLOCK_M x warps", "registers", "spill bytes"), rows))


if __name__ == "__main__":
    main()
