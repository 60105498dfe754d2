"""Bring a cut-off sweep's finished points into a new run folder, so that ``mimetic sweep``
there skips them: for device sessions, whose machine (and the sweep's run folders on it) is
gone once the session ends, while the rows came back.

    python benchmarks/device/sweep_rows.py TOML ROWS.jsonl OUT_DIR

``ROWS.jsonl``: one finished point's row per line, as ``issue11_ablation.sh`` collects them
(each run folder's ``row.json``). Every row that is a point of ``TOML`` is written to
``OUT_DIR/runs/<run_id>/row.json`` (the file that marks a point finished); a row that
matches no point, or an existing row.json that differs, is an error. Carry ``OUT_DIR`` to the
device (``run``'s ``carry``) and run the sweep with ``--out OUT_DIR``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mimetic.train.sweep.config import load_sweep


def restore(toml: str, rows_file: str, out_dir: str) -> int:
    points = load_sweep(toml).points()
    columns = list(points[0].to_dict())          # the grid columns every row of the sweep has

    def key(values: dict) -> str:                # JSON: axis values may be lists
        return json.dumps({k: values.get(k) for k in columns}, sort_keys=True)

    by_key = {key(p.to_dict()): p for p in points}
    written = 0
    for n, line in enumerate(Path(rows_file).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        point = by_key.get(key(row))
        if point is None:
            raise SystemExit(f"{rows_file}:{n}: row {key(row)} is no point of {toml}")
        target = Path(out_dir) / "runs" / point.run_id / "row.json"
        if target.exists() and json.loads(target.read_text()) != row:
            raise SystemExit(f"{target} exists and differs from {rows_file}:{n}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(row, indent=1) + "\n")
        written += 1
    return written


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("toml")
    ap.add_argument("rows")
    ap.add_argument("out_dir")
    args = ap.parse_args(argv)
    print(f"{restore(args.toml, args.rows, args.out_dir)} finished points written under {args.out_dir}/runs",
          file=sys.stderr)


if __name__ == "__main__":
    main()
