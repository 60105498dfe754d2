"""The ``mimetic`` command: demo, train, sweep, attn, generate.

Every user error (bad flag value, unknown task, impossible length, missing file) ends in
one line ``mimetic: error: ...`` and exit status 2, never a traceback (set
``MIMETIC_DEBUG=1`` to see the traceback).

Each command imports the parts of the package it runs (training, sweeps, analysis), so that
one command does not load the others'; torch and the models load with the package anyway.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from .layer_kinds import MAMBA2, MIMETIC_LAYERS
from .models import MambaConfig, MambaLM


def _kv_pairs(items: list[str]) -> dict:
    """``["copy_len=32", "vocab=16"]`` -> {"copy_len": 32, "vocab": 16} (ints/floats parsed)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        if not key.strip():
            raise ValueError(f"--task-arg {item!r} names no knob (expected KEY=VALUE)")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key] = value
    return out


def _token_ids(flag: str, text: str) -> list[int]:
    """``"3 1 4"`` -> [3, 1, 4]; anything else is the user's mistake, named."""
    try:
        ids = [int(t) for t in text.split()]
    except ValueError:
        raise ValueError(f"{flag} must be space-separated token ids (integers), got {text!r}") from None
    if not ids:
        raise ValueError(f"{flag} must hold at least one token id")
    return ids


def cmd_demo(args) -> None:
    from .demo import DemoSettings, run_demo, summary_table

    s = DemoSettings(steps=args.steps, layer=args.layer, copy_len=args.copy_len, seed=args.seed)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads={args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    print(f"Training a {s.n_layer}-layer {s.layer} (d_model={s.d_model}, d_state={s.d_state}) on "
          f"the copy task (copy_len={s.copy_len}, vocab={s.vocab}) for {s.steps} steps, on CPU: "
          "default init, then mimetic init.")
    results = run_demo(s, args.out, progress=not args.no_progress)
    print()
    print(summary_table(results, s.thresholds))
    print(f"\nplot: {Path(args.out) / 'demo.png'}   metrics: {Path(args.out)}/<init>/metrics.jsonl")


def cmd_train(args) -> None:
    from .tasks import make_task
    from .train import TrainConfig, train

    if args.allow_changed is not None and not args.resume:
        raise ValueError("--allow-changed only applies with --resume (it names settings a resumed run may change)")
    task = make_task(args.task, **_kv_pairs(args.task_arg))
    ssm = {"layer": args.layer, "d_state": args.d_state}
    if args.layer == MAMBA2:
        ssm["headdim"] = args.headdim
    config = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=task.vocab_size,
                         ssm_cfg=ssm, init=args.init)
    torch.manual_seed(args.seed)
    model = MambaLM(config)
    result = train(model, task, TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        eval_every=args.eval_every, target_acc=args.target_acc, out_dir=args.out,
        resume=args.resume, device=args.device, parallel=args.parallel,
        allow_changed=_allow_changed(args.allow_changed)))
    model = _model_to_save(model, config, args.out)
    if model is None:  # another rank of a torchrun job: rank 0 saves and prints
        return
    model.save_pretrained(Path(args.out) / "model")
    final = result.final or {}
    print(f"step {result.step}: token_acc={final.get('token_acc', float('nan')):.3f} "
          f"seq_acc={final.get('seq_acc', float('nan')):.3f}; model saved to {Path(args.out) / 'model'}")


def _allow_changed(names: list[str] | None) -> bool | tuple[str, ...]:
    """``--allow-changed`` alone: any setting; with names (``lr task.copy_len``): those."""
    if names is None:
        return ()
    return tuple(names) if names else True


def _model_to_save(model, config, out: str):
    """The trained model to save; under torchrun (leaving its process group) None on ranks
    other than 0, and with FSDP2 (``model`` sharded) the final checkpoint in a plain model."""
    from .train.distributed import is_main_process, shutdown, world_size

    if world_size() <= 1:
        return model
    shutdown()
    if not is_main_process():
        return None
    if any(hasattr(p, "full_tensor") for p in model.parameters()):  # FSDP2's DTensors
        from .train import latest_checkpoint, load_checkpoint

        model = MambaLM(config)
        load_checkpoint(latest_checkpoint(out), model)
    return model


def _pack_arg(value: str) -> str | int:
    if value in ("auto", "off"):
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--pack must be auto, off or a positive int, got {value!r}") from None


def cmd_sweep(args) -> None:
    from .train.sweep import run_sweep
    from .train.sweep.select import parse_only

    result = run_sweep(args.config, args.out, workers=args.workers, device=args.device,
                       progress=not args.no_progress, dry_run=args.dry_run, pack=_pack_arg(args.pack),
                       ray=args.ray, only=parse_only(args.only) if args.only else None,
                       report_only=args.report)
    if args.dry_run:  # the points, one a line
        for row in result.rows:
            print(" ".join(f"{k}={v}" for k, v in row.items() if v is not None))
        print(f"{len(result.rows)} runs")
        return
    if not args.report:
        print(f"{len(result.rows)} runs ({result.skipped} already done)")
    for path in (result.csv_path, result.summary_path, result.history_path, *result.plots):
        if path is not None:
            print(f"  {path}")


def cmd_attn(args) -> None:
    from .analysis import attn_command

    if not args.input.strip():
        raise ValueError("--input must be space-separated token ids or a task name, got an empty string")
    try:
        result = attn_command(args.checkpoint, args.input, args.out, layers=args.layers,
                              log_scale=not args.linear, reduce=args.reduce, max_heads=args.max_heads,
                              seed=args.seed, task_kwargs=_kv_pairs(args.task_arg) or None)
    except IndexError as e:  # a --layers index the model does not have: the user's
        raise ValueError(f"--layers: {e}") from None
    for line in result.lines():
        print(line)
    print(f"attention maps written to {result.path}")


def cmd_generate(args) -> None:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = MambaLM.from_pretrained(args.checkpoint, device=device).eval()
    ids = torch.tensor([_token_ids("--prompt", args.prompt)], device=device)
    out = model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, cuda_graph=args.cuda_graph,
                         state_dtype=getattr(torch, args.state_dtype))
    print(" ".join(str(t) for t in out[0].tolist()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mimetic", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="default vs mimetic init on the copy task, on CPU (a few minutes)")
    d.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    d.add_argument("--steps", type=int, default=400)
    d.add_argument("--layer", choices=MIMETIC_LAYERS, default=MAMBA2)
    d.add_argument("--copy-len", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train one model on one task")
    t.add_argument("--task", default="copy")
    t.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="task knob, repeatable (e.g. copy_len=64)")
    t.add_argument("--layer", choices=MIMETIC_LAYERS, default=MAMBA2)
    t.add_argument("--init", choices=["default", "mimetic"], default="mimetic")
    t.add_argument("--d-model", type=int, default=64)
    t.add_argument("--n-layer", type=int, default=2)
    t.add_argument("--d-state", type=int, default=16)
    t.add_argument("--headdim", type=int, default=16)
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--eval-every", type=int, default=100)
    t.add_argument("--target-acc", type=float, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None)
    t.add_argument("--out", default="runs/train")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--allow-changed", nargs="*", default=None, metavar="SETTING",
                   help="with --resume: settings that may differ from the checkpoint's (e.g. lr, "
                        "task.copy_len, model.init); alone: any")
    t.add_argument("--parallel", choices=["ddp", "fsdp"], default="ddp",
                   help="under torchrun with several processes: DDP (a replica a GPU) or FSDP2 (sharded)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sweep", help="run a grid of experiments from a TOML file")
    s.add_argument("config")
    s.add_argument("--out", default=None, help="output directory (default: runs/<config name>)")
    s.add_argument("--workers", type=int, default=1,
                   help="jobs at once: packs in threads on one GPU, else processes")
    s.add_argument("--pack", default="auto",
                   help="auto: train points of one shape together as ensembles (each model exactly "
                        "its own run); N: at most N models a pack; off: one point at a time")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    s.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run each pack (or point) as a Ray task with a GPU share: on a local Ray "
                        "instance, or on the cluster at ADDRESS (auto, ray://host:10001); needs mimetic[ray]")
    s.add_argument("--only", action="append", metavar="KEY=V[,V...]",
                   help="train only the points with these values (a grid key or an extra axis' dotted "
                        "path, e.g. layer=Mamba1, seed=0,1, model.d_model=64; repeat for more keys); "
                        "the CSV keeps every finished point of the folder")
    s.add_argument("--dry-run", action="store_true", help="list the grid points and stop")
    s.add_argument("--report", action="store_true",
                   help="train nothing: write the CSVs, history.csv and the plots of the runs already in "
                        "the folder (e.g. of a sweep cut off by a time limit)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_sweep)

    a = sub.add_parser("attn", help="draw the implicit attention maps of a checkpoint")
    a.add_argument("checkpoint")
    a.add_argument("--input", required=True,
                   help="space-separated token ids, or a task name (e.g. copy) to draw a batch from")
    a.add_argument("--out", default="attention_maps.png")
    a.add_argument("--layers", type=int, nargs="+", default=None, help="layer indices (default: all)")
    a.add_argument("--reduce", choices=["mean_abs", "mean", "none"], default="mean_abs",
                   help="Mamba-1: how to reduce the per-channel maps")
    a.add_argument("--max-heads", type=int, default=4, help="heads drawn per layer")
    a.add_argument("--linear", action="store_true", help="linear colour scale (default: log)")
    a.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="task knob when --input names a task (e.g. copy_len=16)")
    a.add_argument("--seed", type=int, default=0, help="seed of the task sequence")
    a.set_defaults(func=cmd_attn)

    g = sub.add_parser("generate", help="continue a prompt of token ids with a checkpoint")
    g.add_argument("checkpoint")
    g.add_argument("--prompt", required=True, help="space-separated token ids")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=1)
    g.add_argument("--top-p", type=float, default=0.0)
    g.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    g.add_argument("--cuda-graph", action="store_true",
                   help="replay each decoding step as a CUDA graph (GPU, Mamba layers only)")
    g.add_argument("--state-dtype", choices=["float32", "float16", "bfloat16"],
                   default="float32", help="dtype of the SSM states while decoding")
    g.set_defaults(func=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except _user_errors() as e:
        if os.environ.get("MIMETIC_DEBUG"):
            raise
        print(f"mimetic: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mimetic: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so, in one line, and how to see more
        if os.environ.get("MIMETIC_DEBUG"):
            raise
        print(f"mimetic: internal error: {type(e).__name__}: {_one_line(e)} (a bug; run again with "
              "MIMETIC_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return " ".join(text.split("\n")[0].split()) if text else type(e).__name__


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by what the user gave or where they run (bad values, missing or corrupt
    files, a busy output folder, a full disk, a run that diverged with the given settings):
    one line and exit 2."""
    from .train import NonFiniteLossError
    from .train.resume import RunLockedError

    return (ValueError, FileNotFoundError, NotImplementedError, RunLockedError, OSError, NonFiniteLossError)


if __name__ == "__main__":
    sys.exit(main())
