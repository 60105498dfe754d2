"""Profile one CPU training step of mimetic's Mamba-1 / Mamba-2 (benchmarks/cpu.py's shape).

Prints torch.profiler's top ops by self CPU time, and the wall / process-CPU time of the
step (median of --reps), so that layer-level changes can be checked on a busy machine.

    python benchmarks/cpu_profile.py [--model mamba1|mamba2] [--reps 5] [--rows 25]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import cpu  # benchmarks/cpu.py (this script's folder is first on sys.path): shapes, builders, step
from harness import env_info, print_record


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mamba1", choices=["mamba1", "mamba2"])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print_record(env_info("cpu"))
    torch.manual_seed(0)
    model = (cpu.ours_mamba1 if args.model == "mamba1" else cpu.ours_mamba2)().train()
    ids = torch.randint(0, cpu.SHAPE["vocab"], (cpu.SHAPE["batch"], cpu.SHAPE["length"]),
                        generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        cpu.train_step(model, ids)
    wall, cpu_t = [], []
    for _ in range(args.reps):
        w0, c0 = time.perf_counter(), time.process_time()
        cpu.train_step(model, ids)
        wall.append(time.perf_counter() - w0)
        cpu_t.append(time.process_time() - c0)
    print(f"{args.model}: wall {statistics.median(wall):.3f} s, process CPU "
          f"{statistics.median(cpu_t):.3f} s (median of {args.reps}; load {os.getloadavg()[0]:.2f})")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        cpu.train_step(model, ids)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
