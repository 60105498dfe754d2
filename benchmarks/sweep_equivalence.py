"""A packed sweep against a one-point-at-a-time sweep of the same points: do the rows agree?

Takes a sweep file, cuts its grid down (``--grid key=v1,v2``, e.g. ``length=128,512``) and
its training to ``--steps`` steps (two evaluations), and runs it twice into fresh folders:
``pack="off"`` with ``cuda_graph = false`` (today's runner: one eager run after another)
and ``pack="auto"`` (ensembles, CUDA-graph steps). Prints, per point, both rows' final
token accuracy and eval loss and their differences, then the largest difference and the two
wall times. ``--fp32`` turns autocast off, so that only float round-off separates the two
(with bf16 autocast, round-off grows over training and the rows drift apart by more).

    python benchmarks/sweep_equivalence.py experiments/copy_length.toml --steps 300 \\
        --grid layer=Mamba1,Mamba2 --grid d_state=16 --grid length=64,256 --out DIR

Writes DIR/sweep_equivalence.json. A check that records numbers; it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import tomllib

from harness import env_info, markdown_table, seconds, write_json
from mimetic.train.sweep import run_sweep


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def toml_text(data: dict, prefix: str = "") -> str:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix else []
    lines += [f"{k} = {json.dumps(v)}" for k, v in scalars.items()]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(toml_text(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--grid", action="append", default=[], help="key=v1,v2 (repeatable)")
    ap.add_argument("--fp32", action="store_true", help="no autocast: round-off is the only difference")
    ap.add_argument("--workers", type=int, default=1, help="workers of the packed sweep")
    ap.add_argument("--out", default="runs/sweep_equivalence")
    args = ap.parse_args()

    data = tomllib.loads(Path(args.config).read_text())
    for item in args.grid:
        key, values = item.split("=", 1)
        data["grid"][key] = [_value(v) for v in values.split(",")]
    data.pop("eval", None)
    data["train"].update(steps=args.steps, eval_every=max(1, args.steps // 2), early_stop=False)
    if args.fp32:
        data["train"]["amp"] = False
    scratch = Path(tempfile.mkdtemp())
    walls, rows = {}, {}
    for mode in ("off", "auto"):
        variant = json.loads(json.dumps(data))
        if mode == "off":
            variant["train"]["cuda_graph"] = False
        path = scratch / f"{mode}.toml"
        path.write_text(toml_text(variant) + "\n")
        walls[mode], res = seconds(lambda: run_sweep(path, scratch / mode, progress=False, plot=False, pack=mode,
                                                     workers=1 if mode == "off" else args.workers))
        rows[mode] = res.rows
    table = []
    for a, b in zip(rows["off"], rows["auto"]):
        key = {k: a[k] for k in ("layer", "init", "d_state", "length", "seed")}
        table.append({**key, "acc_off": a["final_token_acc"], "acc_packed": b["final_token_acc"],
                      "loss_off": a["final_loss"], "loss_packed": b["final_loss"],
                      "d_acc": abs(a["final_token_acc"] - b["final_token_acc"]),
                      "d_loss": abs(a["final_loss"] - b["final_loss"])})
    report = {"info": env_info(), "config": args.config, "steps": args.steps, "grid": args.grid, "fp32": args.fp32,
              "wall_s": walls, "points": table,
              "max_d_acc": max(r["d_acc"] for r in table), "max_d_loss": max(r["d_loss"] for r in table)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep_equivalence.json", report)
    print(markdown_table(("layer", "init", "d_state", "length", "seed", "acc off", "acc packed", "loss off",
                          "loss packed"),
                         [(r["layer"], r["init"], r["d_state"], r["length"], r["seed"], f"{r['acc_off']:.4f}",
                           f"{r['acc_packed']:.4f}", f"{r['loss_off']:.4f}", f"{r['loss_packed']:.4f}")
                          for r in table]))
    print(f"max |d acc| {report['max_d_acc']:.2e}, max |d loss| {report['max_d_loss']:.2e}; "
          f"wall s: off {walls['off']:.1f}, packed {walls['auto']:.1f}")


if __name__ == "__main__":
    main()
