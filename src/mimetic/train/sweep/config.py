"""Sweep config files (TOML): schema, validation, and expansion into grid points.

A sweep file has these tables (``[grid]``, ``[model]``, ``[train]`` required)::

    [sweep]                      # optional
    name = "copy_length"         # default: the file's stem; also the default output folder
    description = "..."
    metric = "final_token_acc"   # what the plots show (any numeric column of results.csv)

    [grid]                       # every key required; a list (or one value) per key
    task = ["copy"]              # registry names (mimetic.tasks.TASKS)
    init = ["default", "mimetic"]
    layer = ["Mamba1", "Mamba2", "attention"]
    d_state = [16, 64]
    length = [64, 128, 256]      # the task's length knob: copy_len for copy, seq_len otherwise
    seed = [0, 1, 2]

    [tasks.copy]                 # optional, fixed knobs per task (any but the length knob)
    vocab = 26

    [inits.no_tie]               # optional, named init variants usable in grid.init (ablations):
    init = "mimetic"             # the base init ("default" or "mimetic") ...
    init_cfg = { tie_bc = false }  # ... and MambaConfig.init_cfg (mimetic_init_ knobs)

    [model]                      # MambaConfig fields, except those the grid sets
    d_model = 64                 # (vocab_size, init, attn_layer_idx, ssm_cfg.layer/d_state)
    n_layer = 2
    [model.ssm_cfg]              # mixer arguments for every SSM layer type ...
    d_conv = 4
    [model.ssm_cfg.Mamba2]       # ... and per layer type
    headdim = 16
    [model.attn_cfg]             # needed when "attention" is in grid.layer
    num_heads = 4

    [train]                      # TrainConfig fields, except seed/out_dir/resume/device/progress
    steps = 2000
    target_acc = 0.99

    [eval]                       # optional: length generalization of the final model
    lengths = [512, 1024]        # extra values of the length knob
    batches = 4
    batch_size = 32

Attention points ignore ``init`` and ``d_state`` (``MambaLM`` applies mimetic init only to
SSM layers, and attention has no state size): they are run once per (task, length, seed) with
``init = "default"`` and ``d_state`` empty, and drawn as the baseline.
"""
from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...tasks import TASKS, make_task
from ..config import TrainConfig

GRID_KEYS = ("task", "init", "layer", "d_state", "length", "seed")
TOP_KEYS = {"sweep", "grid", "tasks", "inits", "model", "train", "eval"}
REQUIRED_TOP = ("grid", "model", "train")
SWEEP_KEYS = {"name", "description", "metric"}
EVAL_KEYS = {"lengths", "batches", "batch_size"}
SSM_LAYERS = ("Mamba1", "Mamba2")
ATTENTION = "attention"
INITS = ("default", "mimetic")
# Set by the sweep per run, so not allowed in the file.
TRAIN_RESERVED = {"seed", "out_dir", "resume", "device", "progress", "interrupt_after"}
MODEL_RESERVED = {"vocab_size", "init", "attn_layer_idx"}


@dataclass(frozen=True)
class GridPoint:
    """One run of a sweep. ``d_state`` is None for attention (it has no state)."""

    task: str
    init: str
    layer: str
    d_state: int | None
    length: int
    seed: int

    @property
    def run_id(self) -> str:
        """A stable folder name, e.g. ``copy-mimetic-Mamba2-d16-L64-s0``."""
        d = "dNA" if self.d_state is None else f"d{self.d_state}"
        return f"{self.task}-{self.init}-{self.layer}-{d}-L{self.length}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SweepConfig:
    """A parsed and validated sweep file (see the module docstring for the format)."""

    name: str
    grid: dict[str, list]
    model: dict[str, Any]
    train: dict[str, Any]
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    inits: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    metric: str = "final_token_acc"

    def points(self) -> list[GridPoint]:
        """Every grid point, attention points collapsed over init and d_state, in file order."""
        seen: dict[GridPoint, None] = {}
        for task, init, layer, d_state, length, seed in itertools.product(
            *(self.grid[k] for k in GRID_KEYS)
        ):
            if layer == ATTENTION:
                init, d_state = "default", None
            seen.setdefault(GridPoint(task, init, layer, d_state, length, seed), None)
        return list(seen)

    def init_for(self, point: GridPoint) -> tuple[str, dict[str, Any]]:
        """(MambaConfig.init, MambaConfig.init_cfg) of a grid point's init name."""
        if point.init in self.inits:
            variant = self.inits[point.init]
            return variant["init"], dict(variant.get("init_cfg", {}))
        return point.init, {}

    def task_for(self, point: GridPoint):
        """The ``Task`` of a grid point (fixed knobs + the length knob)."""
        task = make_task(point.task, **self.tasks.get(point.task, {}))
        return task.with_length(point.length)


def _one_line(msg: str) -> ValueError:
    return ValueError(" ".join(msg.split()))


def _check_keys(where: str, got: set[str], allowed: set[str], required: tuple[str, ...] = ()) -> None:
    unknown = sorted(got - allowed)
    missing = [k for k in required if k not in got]
    parts = []
    if unknown:
        parts.append(f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    if missing:
        parts.append(f"missing key(s) {', '.join(missing)}")
    if parts:
        raise _one_line(f"{where}: " + "; ".join(parts))


def _as_list(where: str, key: str, value: Any) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise _one_line(f"{where}: grid.{key} is empty")
    return values


def parse_sweep(data: dict[str, Any], name: str = "sweep", where: str = "sweep config") -> SweepConfig:
    """Validate a sweep given as a dict (the parsed TOML). Errors are one-line ValueErrors
    naming the offending keys or values."""
    _check_keys(where, set(data), TOP_KEYS, REQUIRED_TOP)
    meta = data.get("sweep", {})
    _check_keys(f"{where} [sweep]", set(meta), SWEEP_KEYS)

    raw_grid = data["grid"]
    _check_keys(f"{where} [grid]", set(raw_grid), set(GRID_KEYS), GRID_KEYS)
    grid = {k: _as_list(where, k, raw_grid[k]) for k in GRID_KEYS}
    bad = [t for t in grid["task"] if t not in TASKS]
    if bad:
        raise _one_line(f"{where}: unknown task(s) {bad} in grid.task; valid: {sorted(TASKS)}")
    inits = data.get("inits", {})
    for iname, variant in inits.items():
        _check_keys(f"{where} [inits.{iname}]", set(variant), {"init", "init_cfg"}, ("init",))
        if variant["init"] not in INITS:
            raise _one_line(f"{where} [inits.{iname}]: init must be one of {list(INITS)}, got {variant['init']!r}")
    bad = [i for i in grid["init"] if i not in INITS and i not in inits]
    if bad:
        raise _one_line(
            f"{where}: unknown init(s) {bad} in grid.init; valid: {[*INITS, *inits]} (add [inits.<name>] for variants)"
        )
    bad = [x for x in grid["layer"] if x not in (*SSM_LAYERS, ATTENTION)]
    if bad:
        raise _one_line(f"{where}: unknown layer(s) {bad} in grid.layer; valid: {[*SSM_LAYERS, ATTENTION]}")
    for k in ("d_state", "length", "seed"):
        bad = [x for x in grid[k] if isinstance(x, bool) or not isinstance(x, int) or x < (0 if k == "seed" else 1)]
        if bad:
            raise _one_line(f"{where}: grid.{k} must hold positive ints, got {bad}")

    tasks = data.get("tasks", {})
    _check_keys(f"{where} [tasks]", set(tasks), set(TASKS))
    for tname, knobs in tasks.items():
        cls = TASKS[tname]
        allowed = {f.name for f in dataclasses.fields(cls)} - {cls.length_knob}  # type: ignore[arg-type]
        _check_keys(f"{where} [tasks.{tname}]", set(knobs), allowed)

    train = dict(data["train"])
    allowed_train = {f.name for f in dataclasses.fields(TrainConfig)} - TRAIN_RESERVED
    _check_keys(f"{where} [train]", set(train), allowed_train)

    model = dict(data["model"])
    _check_model_keys(where, model, grid["layer"])

    ev = dict(data.get("eval", {}))
    _check_keys(f"{where} [eval]", set(ev), EVAL_KEYS)

    cfg = SweepConfig(
        name=meta.get("name", name),
        grid=grid,
        model=model,
        train=train,
        tasks=tasks,
        inits=inits,
        eval=ev,
        description=meta.get("description", ""),
        metric=meta.get("metric", "final_token_acc"),
    )
    # Build every task and the train config once, so that bad values fail now, not mid-sweep.
    try:
        from ...init import MimeticConfig

        for variant in inits.values():
            MimeticConfig(**variant.get("init_cfg", {}))
        TrainConfig(**train)
        for point in cfg.points():
            task = cfg.task_for(point)
            for n in ev.get("lengths", []):
                task.with_length(n)
    except (ValueError, TypeError) as e:
        raise _one_line(f"{where}: {e}") from None
    return cfg


def _check_model_keys(where: str, model: dict[str, Any], layers: list[str]) -> None:
    try:
        from ...models import MambaConfig
    except ImportError:  # models not importable: only the reserved keys can be checked
        allowed = set(model)
    else:
        allowed = {f.name for f in dataclasses.fields(MambaConfig)}
    allowed -= MODEL_RESERVED
    _check_keys(f"{where} [model]", set(model), allowed, ("d_model", "n_layer"))
    ssm_cfg = model.get("ssm_cfg", {})
    reserved = sorted({"layer", "d_state"} & set(ssm_cfg))
    if reserved:
        raise _one_line(f"{where} [model.ssm_cfg]: {', '.join(reserved)} set by the grid, remove them")
    if ATTENTION in layers and "num_heads" not in model.get("attn_cfg", {}):
        raise _one_line(f"{where} [model.attn_cfg]: missing key num_heads (needed for layer 'attention')")


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep TOML file; the sweep's default name is the file's stem."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise _one_line(f"{path}: invalid TOML: {e}") from None
    return parse_sweep(data, name=path.stem, where=str(path))
