"""Training on several GPUs: the check of DDP/FSDP2 losses against one process, one LM's
scaling over 1-8 GPUs, and a sweep's wall time over GPU counts.

    python benchmarks/ddp_scaling.py --json benchmarks/logs/ddp_scaling.json   # every section
    python benchmarks/ddp_scaling.py --sections ddp --gpus 1 2 4 8
    python benchmarks/ddp_scaling.py --sections sweep --gpus 1 2 4 8
    python benchmarks/ddp_scaling.py --smoke      # CPU check of both sections (gloo, Ray on CPU)

Sections (``--sections``, all three by default; GPU counts above the visible ones are skipped):

check
    Correctness on NCCL before speed: a 2-layer d_model 256 model (length 257, global batch 16,
    fp32, 30 steps) trained by 1 process and by 2 (DDP, then FSDP2) with the same global
    batch; the largest relative difference of the per-eval train and eval losses (gloo on the
    CPU agrees to ~1e-6; on GPUs kernels differ with the batch size, expect <= 1e-3).

ddp
    For each N of ``--gpus``: ``torchrun --standalone --nproc_per_node N`` of this file's
    ``--ddp-worker``, which trains a ``MambaLM`` of ``--n-layer`` 24 layers, ``--d-model`` 768
    (``--layer`` Mamba2 by default, d_state 64/headdim 64 for Mamba2, 16 for Mamba1), LM head of
    ``--vocab`` 50280, on the copy task at length ``--length`` 2048 (copy_len 1023, seq 2047)
    with ``mimetic.train.train`` itself: ``--per-gpu`` 8 rows a GPU (weak scaling: global batch
    8N), bf16 autocast, the eager step everywhere (``cuda_graph=False``, so N = 1 runs the same
    loop). A first ``train()`` of ``--warmup`` steps compiles and autotunes the kernels; a second
    of ``--steps`` steps on a fresh model is timed: tokens/s = ``result.tokens / result.elapsed``
    (training seconds, evaluation excluded; each step ends in the loss's read-back, so it is
    synchronised). Efficiency(N) = tokens/s(N) / (N x tokens/s(1)); goal >= 0.90 at 8.
    ``--modes ddp,fsdp`` adds FSDP2 (``parallel="fsdp"``) at every N > 1 (``--modes fsdp``:
    FSDP2 only, beside the one-process baseline).

sweep
    For each K of ``--gpus``, a fresh process that sees GPUs 0..K-1 (``CUDA_VISIBLE_DEVICES``)
    starts a local Ray instance and runs a generated grid (copy, Mamba1/Mamba2 x default/mimetic
    x ``--seeds`` seeds, 2 layers d_model 64 as ``experiments/copy_quick.toml``, copy_len 64,
    ``--sweep-steps`` steps) through ``mimetic.train.sweep.ray_runner.run_on_ray`` with packs of
    ``--pack`` models, each pack a whole-GPU task. wall = the ``run_on_ray`` loop (Ray start-up
    excluded, worker start-up and scheduling included); GPU time = sum of task seconds x GPU
    share; ideal = GPU time / K; ratio = wall / ideal, goal <= 1.2.

``--smoke``: CPU, gloo; ddp with a 2-layer d_model 32 model at length 33, N = 1 and 2; sweep
with 4 tiny points on a CPU Ray instance (K reported as 0). Checks the plumbing, measures
nothing. Output: a table per section and, with ``--json``, the rows plus device, versions, date.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _versions() -> dict:
    import torch

    from harness import env_info  # here: the launched workers need neither

    extra = {}
    if torch.cuda.is_available():
        extra = dict(gpus=torch.cuda.device_count(), nccl=".".join(map(str, torch.cuda.nccl.version())))
    return env_info(packages=("ray",), **extra)


# ----------------------------------------------------------------------------------- ddp ---

def ddp_worker(args) -> None:
    """One rank of the torchrun job: warm-up train(), timed train(); rank 0 writes the row."""
    import torch

    from mimetic.models import MambaConfig, MambaLM
    from mimetic.tasks import make_task
    from mimetic.train import TrainConfig, train
    from mimetic.train.distributed import is_main_process, shutdown, world_size

    n = world_size()
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        torch.set_num_threads(1)
    task = make_task("copy", copy_len=(args.length - 1) // 2, vocab=26)
    ssm = {"layer": args.layer, "d_state": 64 if args.layer == "Mamba2" else 16}
    if args.layer == "Mamba2":
        ssm["headdim"] = 64 if not args.smoke else 16
    mcfg = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=args.vocab, ssm_cfg=ssm)

    if args.check:  # the correctness run: small, fp32, its history written by rank 0
        task = make_task("copy", copy_len=128 if not args.smoke else 16, vocab=26)
        mcfg = MambaConfig(d_model=256 if not args.smoke else 32, n_layer=2, vocab_size=task.vocab_size, ssm_cfg=ssm)
        torch.manual_seed(0)
        cfg = TrainConfig(steps=30, batch_size=16, lr=1e-3, warmup_steps=5, eval_every=10, eval_batches=1,
                          progress=False, device=device, amp=False, cuda_graph=False, parallel=args.parallel)
        result = train(MambaLM(mcfg), task, cfg)
        if is_main_process():
            Path(args.result).write_text(json.dumps({"history": result.history}))
        shutdown()
        return

    def run(steps: int):
        torch.manual_seed(0)
        model = MambaLM(mcfg)
        cfg = TrainConfig(steps=steps, batch_size=args.per_gpu * n, lr=1e-4, warmup_steps=0, eval_every=steps,
                          eval_batches=1, eval_batch_size=args.per_gpu, progress=False, device=device,
                          cuda_graph=False, parallel=args.parallel)
        return train(model, task, cfg), model

    run(args.warmup)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result, model = run(args.steps)
    if is_main_process():
        row = {"mode": args.parallel, "gpus": n, "global_batch": args.per_gpu * n, "seq_len": task.seq_len,
               "n_params": result.n_params, "steps": result.step, "elapsed_s": result.elapsed,
               "tokens_per_s": result.tokens / result.elapsed, "ms_per_step": 1e3 * result.elapsed / result.step}
        if device == "cuda":
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
        Path(args.result).write_text(json.dumps(row))
    shutdown()


def ddp_section(args, counts: list[int]) -> list[dict]:
    rows = []
    # The one-process baseline first (what every efficiency is relative to), then each mode.
    plan = [("ddp", 1)] + [(mode, n) for mode in args.modes.split(",") for n in counts if n > 1]
    for mode, n in plan:
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "row.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                   __file__, "--ddp-worker", "--result", str(result), "--parallel", mode]
            cmd += _model_flags(args)
            env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.smoke else dict(os.environ)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                                  timeout=args.timeout)
            if proc.returncode != 0 or not result.exists():
                rows.append({"mode": mode, "gpus": n, "error": proc.stderr[-1500:]})
                print(f"{mode} N={n}: failed\n{proc.stderr[-1500:]}", flush=True)
                continue
            row = json.loads(result.read_text()) | {"wall_s": time.perf_counter() - t0}
        rows.append(row)
        print(f"{mode} N={n}: {row['tokens_per_s']:.0f} tok/s, {row['ms_per_step']:.1f} ms/step", flush=True)
    base = next((r["tokens_per_s"] for r in rows if r.get("gpus") == 1 and "error" not in r), None)
    for r in rows:
        if base and "error" not in r:
            r["efficiency"] = r["tokens_per_s"] / (r["gpus"] * base)
    return rows


def check_section(args) -> list[dict]:
    """1 process vs 2 (DDP, FSDP2) on the same global batch: the largest relative loss gap."""
    runs = {}
    for mode, n in (("ddp", 1), ("ddp", 2), ("fsdp", 2)):
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "h.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                   __file__, "--ddp-worker", "--check", "--result", str(result), "--parallel", mode]
            cmd += _model_flags(args)
            env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.smoke else dict(os.environ)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=args.timeout)
            if proc.returncode != 0 or not result.exists():
                runs[(mode, n)] = {"error": proc.stderr[-1500:]}
                print(f"check {mode} N={n}: failed\n{proc.stderr[-1500:]}", flush=True)
                continue
            runs[(mode, n)] = json.loads(result.read_text())
    rows = []
    ref = runs.get(("ddp", 1), {})
    for (mode, n), got in runs.items():
        if n == 1:
            continue
        if "error" in got or "error" in ref:
            rows.append({"mode": mode, "gpus": n, "error": got.get("error") or ref.get("error")})
            continue
        gaps = [abs(b[k] - a[k]) / max(abs(a[k]), 1e-12) for a, b in zip(ref["history"], got["history"])
                for k in ("train_loss", "loss")]
        rows.append({"mode": mode, "gpus": n, "evals": len(gaps) // 2, "max_rel_loss_gap": max(gaps),
                     "final_loss_1": ref["history"][-1]["loss"], "final_loss_n": got["history"][-1]["loss"]})
        print(f"check {mode} N={n}: max relative loss gap {max(gaps):.2e}", flush=True)
    return rows


def _model_flags(args) -> list[str]:
    return ["--layer", args.layer, "--n-layer", str(args.n_layer), "--d-model", str(args.d_model),
            "--vocab", str(args.vocab), "--length", str(args.length), "--per-gpu", str(args.per_gpu),
            "--warmup", str(args.warmup), "--steps", str(args.steps)] + (["--smoke"] if args.smoke else [])


# --------------------------------------------------------------------------------- sweep ---

def sweep_toml(args) -> str:
    steps, length, d_model, batch = ((4, 3, 16, 8) if args.smoke else (args.sweep_steps, 64, 64, 64))
    seeds = list(range(2 if args.smoke else args.seeds))
    layers = '["Mamba2"]' if args.smoke else '["Mamba1", "Mamba2"]'
    return f"""
[sweep]
name = "sweep_gpus"
[grid]
task = ["copy"]
init = ["default", "mimetic"]
layer = {layers}
d_state = [16]
length = [{length}]
seed = {seeds}
[tasks.copy]
vocab = 26
[model]
d_model = {d_model}
n_layer = 2
[model.ssm_cfg.Mamba2]
headdim = 16
[train]
steps = {steps}
batch_size = {batch}
lr = 2e-3
warmup_steps = {min(100, steps // 10)}
eval_every = {max(1, steps // 4)}
eval_batches = 1
"""


def sweep_worker(args) -> None:
    """One K: a local Ray instance over the visible GPUs, the grid through run_on_ray."""
    import ray

    from mimetic.train.sweep import load_sweep
    from mimetic.train.sweep.ray_runner import run_on_ray

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep_gpus.toml"
        path.write_text(sweep_toml(args))
        cfg = load_sweep(path)
        points = cfg.points()
        if args.smoke:
            ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
                     object_store_memory=80 * 2**20)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        t0 = time.perf_counter()
        jobs = list(run_on_ray(cfg, points, Path(tmp) / "runs", pack=args.pack))
        wall = time.perf_counter() - t0
        ray.shutdown()
    gpu_time = sum(j.seconds * j.gpus for j in jobs)
    row = {"gpus": gpus, "points": len(points), "tasks": len(jobs), "wall_s": wall,
           "task_s": sum(j.seconds for j in jobs), "gpu_time_s": gpu_time}
    if gpus:
        row["ideal_s"] = gpu_time / gpus
        row["ratio"] = wall / row["ideal_s"]
    Path(args.result).write_text(json.dumps(row))


def sweep_section(args, counts: list[int]) -> list[dict]:
    rows = []
    for k in ([0] if args.smoke else counts):
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "row.json"
            cmd = [sys.executable, __file__, "--sweep-worker", "--result", str(result), "--pack", str(args.pack),
                   "--seeds", str(args.seeds), "--sweep-steps", str(args.sweep_steps)]
            cmd += ["--smoke"] if args.smoke else []
            env = dict(os.environ)
            if not args.smoke:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(k)))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=args.timeout)
            if proc.returncode != 0 or not result.exists():
                rows.append({"gpus": k, "error": proc.stderr[-1500:]})
                print(f"sweep K={k}: failed\n{proc.stderr[-1500:]}", flush=True)
                continue
            row = json.loads(result.read_text())
        rows.append(row)
        ratio = f", wall/ideal {row['ratio']:.2f}" if "ratio" in row else ""
        print(f"sweep K={row['gpus']}: {row['tasks']} tasks, wall {row['wall_s']:.1f} s, "
              f"GPU time {row['gpu_time_s']:.1f} s{ratio}", flush=True)
    return rows


# ---------------------------------------------------------------------------------- main ---

def _table(rows: list[dict], keys: list[str]) -> str:
    from harness import markdown_table

    return markdown_table(keys, [[f"{r[k]:.3g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
                                 for r in rows])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="check,ddp,sweep")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--timeout", type=int, default=900, help="seconds per launched job")
    # ddp
    p.add_argument("--layer", choices=["Mamba1", "Mamba2"], default="Mamba2")
    p.add_argument("--n-layer", type=int, default=24)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--vocab", type=int, default=50280)
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--per-gpu", type=int, default=8)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--modes", default="ddp", help="ddp, fsdp or ddp,fsdp (at every N > 1)")
    p.add_argument("--parallel", default="ddp", help=argparse.SUPPRESS)
    # sweep
    p.add_argument("--pack", type=int, default=4, help="models per pack (one whole-GPU task each)")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--sweep-steps", type=int, default=1500)
    # internal: the launched processes
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--sweep-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke and not (args.ddp_worker or args.sweep_worker):
        args.n_layer, args.d_model, args.vocab, args.length = 2, 32, 32, 33
        args.per_gpu, args.warmup, args.steps, args.pack = 2, 1, 3, 2
    if args.ddp_worker:
        ddp_worker(args)
        return 0
    if args.sweep_worker:
        sweep_worker(args)
        return 0

    import torch

    visible = torch.cuda.device_count()
    counts = [1, 2] if args.smoke else [n for n in args.gpus if n <= visible]
    if not counts:
        print("no GPU visible: use --smoke for the CPU check", file=sys.stderr)
        return 2
    report = {"versions": _versions(), "args": {k: v for k, v in vars(args).items() if k != "result"}}
    sections = args.sections.split(",")
    if "check" in sections and (args.smoke or visible >= 2):
        report["check"] = check_section(args)
        print(_table(report["check"], ["mode", "gpus", "evals", "max_rel_loss_gap", "final_loss_1",
                                       "final_loss_n"]))
    if "ddp" in sections:
        report["ddp"] = ddp_section(args, counts)
        print(_table(report["ddp"], ["mode", "gpus", "global_batch", "tokens_per_s", "ms_per_step", "efficiency",
                                     "peak_mem_gb"]))
    if "sweep" in sections:
        report["sweep"] = sweep_section(args, counts)
        print(_table(report["sweep"], ["gpus", "points", "tasks", "wall_s", "gpu_time_s", "ideal_s", "ratio"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    failed = [r for s in ("check", "ddp", "sweep") for r in report.get(s, []) if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
