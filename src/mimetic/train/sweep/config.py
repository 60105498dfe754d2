"""Sweep config files (TOML): schema, validation, and expansion into grid points.

A sweep file has these tables (``[grid]``, ``[model]``, ``[train]`` required)::

    [sweep]                      # optional
    name = "copy_length"         # default: the file's stem; also the default output folder
    description = "..."
    metric = "final_token_acc"   # what the plots show (any numeric column of results.csv)
    best_over = ["train.lr"]     # optional: extra axes tuned per seed; summary_best.csv and the
                                 # plots take each seed's best run over them (sweep/best.py)

    [grid]                       # these six keys required; a list (or one value) per key
    task = ["copy"]              # registry names (mimetic.tasks.TASKS)
    init = ["default", "mimetic"]
    layer = ["Mamba1", "Mamba2", "attention"]   # also "LinearAttention"
    d_state = [16, 64]
    length = [64, 128, 256]      # the task's length knob: copy_len for copy, seq_len otherwise
    seed = [0, 1, 2]
    "model.d_model" = [64, 128]  # optional extra axes: a quoted dotted path (see below)
    "train.lr" = [1e-3, 2e-3]
    [grid.tasks.copy]            # ... or the same paths as nested tables under [grid]
    vocab = [10, 26]             # = "tasks.copy.vocab" = [10, 26]

    [tasks.copy]                 # optional, fixed knobs per task (any but the length knob)
    vocab = 26

    [inits.no_tie]               # optional, named init variants usable in grid.init (ablations):
    init = "mimetic"             # the base init ("default" or "mimetic") ...
    init_cfg = { tie_bc = false }  # ... and MambaConfig.init_cfg (mimetic_init_ knobs;
                                 # horizon = "seq_len": the point's training length)

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
``init = "default"`` and ``d_state`` empty, and drawn as the baseline. ``LinearAttention``
points (causal linear attention, the paper's baseline; ``d_state`` is its key size) ignore
``init`` the same way and keep ``d_state``; ``[model.ssm_cfg]``'s shared keys reach each SSM
layer type that takes them.

Extra grid axes sweep any other setting by dotted path; their values replace the fixed
table's (so ``[model]`` may leave out ``d_model`` / ``n_layer`` when an axis sets them):

- ``model.<MambaConfig field>``, ``model.ssm_cfg.<mixer arg>``, ``model.ssm_cfg.<layer>.<arg>``
  (Mamba1/Mamba2 only), ``model.attn_cfg.<arg>``; not ``vocab_size``, ``init``, ``init_cfg``,
  ``attn_layer_idx``, ``ssm_cfg.layer``, ``ssm_cfg.d_state`` (the grid and the task set them);
- ``train.<TrainConfig field>``, except the reserved ones above;
- ``tasks.<task>.<knob>`` for a task of ``grid.task``, except its length knob.

A value that is itself a list needs the outer list: ``"train.betas" = [[0.9, 0.95]]``.

Keys whose values go together (Zoology's MQAR grid pairs each sequence length with its number
of key-value pairs) are zipped instead of crossed, in ``[[grid.zip]]`` tables of equally long
lists (grid keys or dotted paths; not also given in ``[grid]``)::

    [[grid.zip]]
    length = [64, 128, 256, 512]
    "tasks.mqar.num_kv_pairs" = [4, 8, 16, 64]
An axis that does not apply to a point is dropped from it (value None): ``tasks.<other task>``,
``model.ssm_cfg.*`` for attention, ``model.ssm_cfg.<other layer>.*`` and ``model.attn_cfg.*``
for SSM layers. Each extra axis adds a ``-<path>=<value>`` suffix to the run folder
(``copy-mimetic-Mamba2-d16-L64-s0-model.d_model=128``) and a ``<path>`` column to results.csv.
Every point's task, TrainConfig and MambaConfig are built when the file is loaded, so bad
values fail then, not mid-sweep.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ...init import MimeticConfig
from ...layer_kinds import ATTENTION, LINEAR_ATTENTION, MAMBA2, SSM_LAYERS
from ...models import MambaConfig
from ...models.config import LAYER_TYPES, _accepted_kwargs
from ...modules import MHA
from ...modules._args import mamba2_heads
from ...tasks import TASKS, make_task
from ..config import TrainConfig

GRID_KEYS = ("task", "init", "layer", "d_state", "length", "seed")
TOP_KEYS = {"sweep", "grid", "tasks", "inits", "model", "train", "eval"}
REQUIRED_TOP = ("grid", "model", "train")
SWEEP_KEYS = {"name", "description", "metric", "best_over"}
EVAL_KEYS = {"lengths", "batches", "batch_size"}
INITS = ("default", "mimetic")
#: ``init_cfg = { horizon = "seq_len" }`` in an [inits.<name>] table: mimetic init's decay
#: horizon is each point's training sequence length.
HORIZON_SEQ_LEN = "seq_len"
# Set by the sweep per run, so not allowed in the file.
TRAIN_RESERVED = {"seed", "out_dir", "resume", "device", "progress", "interrupt_after"}
MODEL_RESERVED = {"vocab_size", "init", "attn_layer_idx"}
# Roots of the extra grid axes (dotted paths) and, for the grid-owned paths, what sets them.
AXIS_ROOTS = ("model", "train", "tasks")
AXIS_OWNERS = {
    "model.vocab_size": "the task", "model.init": "grid.init", "model.init_cfg": "grid.init ([inits.<name>])",
    "model.attn_layer_idx": "grid.layer", "model.ssm_cfg.layer": "grid.layer", "model.ssm_cfg.d_state": "grid.d_state",
    "train.seed": "grid.seed",
}


def freeze_value(value: Any) -> Any:
    """``value`` with lists turned into tuples (recursively), so it can be hashed."""
    return tuple(freeze_value(v) for v in value) if isinstance(value, (list, tuple)) else value


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


def axis_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The extra-axis columns (``model.d_model``, ``train.lr``, ...) of result rows, sorted."""
    return sorted({k for r in rows for k in r if "." in k and k.split(".", 1)[0] in AXIS_ROOTS})


def _axis_applies(path: str, task: str, layer: str) -> bool:
    """Whether extra axis ``path`` changes a point of this task and layer type."""
    root, *keys = path.split(".")
    if root == "tasks":
        return keys[0] == task
    if root == "model" and keys[0] == "ssm_cfg":
        return layer != ATTENTION and (keys[1] not in SSM_LAYERS or keys[1] == layer)
    if root == "model" and keys[0] == "attn_cfg":
        return layer == ATTENTION
    return True


def _fmt_value(value: Any) -> str:
    """A value as it appears in a run folder name (only filesystem-safe characters)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(_fmt_value(v) for v in value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))


@dataclass(frozen=True)
class GridPoint:
    """One run of a sweep. ``d_state`` is None for attention (it has no state).

    ``axes``: the extra grid axes as (dotted path, value) pairs sorted by path, values hashable
    (lists as tuples); the value is None where the axis does not apply to this point.
    """

    task: str
    init: str
    layer: str
    d_state: int | None
    length: int
    seed: int
    axes: tuple[tuple[str, Any], ...] = ()

    @property
    def run_id(self) -> str:
        """A stable folder name, e.g. ``copy-mimetic-Mamba2-d16-L64-s0``, plus
        ``-<path>=<value>`` per applying extra axis (``...-s0-model.d_model=128``)."""
        return "-".join(self.run_id_parts)

    @property
    def run_id_parts(self) -> tuple[str, ...]:
        """The ``-``-separated parts of :attr:`run_id`: ``("copy", "mimetic", "Mamba2", "d16",
        "L64", "s0", "model.d_model=128")``."""
        d = "dNA" if self.d_state is None else f"d{self.d_state}"
        axes = tuple(f"{p}={_fmt_value(v)}" for p, v in self.axes if v is not None)
        return (self.task, self.init, self.layer, d, f"L{self.length}", f"s{self.seed}", *axes)

    def to_dict(self) -> dict[str, Any]:
        """The grid keys, then one column per extra axis (its dotted path; lists as lists)."""
        d = {k: getattr(self, k) for k in GRID_KEYS}
        d.update((p, _thaw(v)) for p, v in self.axes)
        return d


@dataclass
class SweepConfig:
    """A parsed and validated sweep file (see the module docstring for the format).

    ``grid`` maps the six grid keys and then the extra axes' dotted paths (sorted) to values.
    """

    name: str
    grid: dict[str, list]
    model: dict[str, Any]
    train: dict[str, Any]
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    inits: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    metric: str = "final_token_acc"
    zips: list[tuple[str, ...]] = field(default_factory=list)
    best_over: tuple[str, ...] = ()

    @property
    def axis_paths(self) -> list[str]:
        """The extra grid axes (dotted paths), sorted."""
        return sorted(k for k in self.grid if k not in GRID_KEYS)

    def _value_rows(self):
        """Every combination of grid values, as tuples in (*GRID_KEYS, *axis_paths) order: the
        product of the keys' lists, except that the keys of one ``[[grid.zip]]`` group advance
        together."""
        keys = (*GRID_KEYS, *self.axis_paths)
        zipped = {k for group in self.zips for k in group}
        free = [k for k in keys if k not in zipped]
        for free_values in itertools.product(*(self.grid[k] for k in free)):
            for rows in itertools.product(*(range(len(self.grid[g[0]])) for g in self.zips)):
                value = dict(zip(free, free_values))
                for group, i in zip(self.zips, rows):
                    value.update((k, self.grid[k][i]) for k in group)
                yield tuple(value[k] for k in keys)

    def points(self) -> list[GridPoint]:
        """Every grid point in file order, attention points collapsed over init and d_state,
        linear-attention points over init, and every point over the extra axes that do not
        apply to it."""
        paths = self.axis_paths
        seen: dict[GridPoint, None] = {}
        for values in self._value_rows():
            task, init, layer, d_state, length, seed = values[: len(GRID_KEYS)]
            if layer == ATTENTION:
                init, d_state = "default", None
            elif layer == LINEAR_ATTENTION:
                init = "default"
            axes = tuple(
                (p, v if _axis_applies(p, task, layer) else None) for p, v in zip(paths, values[len(GRID_KEYS):])
            )
            seen.setdefault(GridPoint(task, init, layer, d_state, length, seed, axes), None)
        return list(seen)

    def _overrides(self, point: GridPoint, root: str) -> list[tuple[list[str], Any]]:
        """The point's applying extra axes under ``root``, as (keys below root, value)."""
        out = []
        for path, value in point.axes:
            head, *keys = path.split(".")
            if head == root and value is not None:
                out.append((keys, value))
        return out

    def model_for(self, point: GridPoint) -> dict[str, Any]:
        """The ``[model]`` table with the point's ``model.*`` axes applied (nested paths go into
        ``ssm_cfg`` / ``ssm_cfg.<layer>`` / ``attn_cfg``, keeping their other entries)."""
        model = copy.deepcopy(self.model)
        for keys, value in self._overrides(point, "model"):
            table = model
            for k in keys[:-1]:
                table = table.setdefault(k, {})
            table[keys[-1]] = value
        return model

    def train_for(self, point: GridPoint) -> dict[str, Any]:
        """The ``[train]`` table with the point's ``train.*`` axes applied."""
        return {**self.train, **{keys[0]: value for keys, value in self._overrides(point, "train")}}

    def train_config(self, point: GridPoint, run_dir: Path, device: str | None = None,
                     progress: bool = False) -> TrainConfig:
        """The ``TrainConfig`` of a point's run in ``run_dir``: ``train_for(point)`` with the
        point's seed, resuming whatever the folder holds."""
        return TrainConfig(**self.train_for(point), seed=point.seed, out_dir=str(run_dir), resume=True,
                           device=device, progress=progress)

    def init_for(self, point: GridPoint) -> tuple[str, dict[str, Any]]:
        """(MambaConfig.init, MambaConfig.init_cfg) of a grid point's init name."""
        if point.init in self.inits:
            variant = self.inits[point.init]
            init_cfg = dict(variant.get("init_cfg", {}))
            if init_cfg.get("horizon") == HORIZON_SEQ_LEN:
                init_cfg["horizon"] = self.task_for(point).seq_len
            return variant["init"], init_cfg
        return point.init, {}

    def task_for(self, point: GridPoint):
        """The ``Task`` of a grid point: fixed knobs, then its ``tasks.<task>.*`` axes (those of
        other tasks are ignored), then the length knob."""
        knobs = dict(self.tasks.get(point.task, {}))
        knobs.update((keys[1], v) for keys, v in self._overrides(point, "tasks") if keys[0] == point.task)
        # The length goes in with the other knobs: a task built at its default length first
        # could fail for knobs that only fit the point's length (64 MQAR pairs need 256 tokens).
        knobs[TASKS[point.task].length_knob] = point.length
        return make_task(point.task, **knobs)


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


def _check_no_repeats(where: str, grid: dict[str, list], zipped: set[str]) -> None:
    """A crossed grid key or axis lists each value once (``seed = [0, 0]`` would run one
    point where two were meant; zipped lists may repeat, their tuples are the points)."""
    for key, values in grid.items():
        if key in zipped:
            continue
        seen = Counter(freeze_value(v) for v in values)
        twice = [v for v, n in seen.items() if n > 1]
        if twice:
            raise _one_line(f"{where}: grid.{key} lists {twice[0]!r} more than once (each value runs once)")


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

    grid_table = dict(data["grid"])
    zip_tables = grid_table.pop("zip", [])
    raw_grid = _flatten_grid(where, grid_table)
    zips = _zip_groups(where, zip_tables, raw_grid)  # adds the zipped keys' lists to raw_grid
    _check_keys(f"{where} [grid]", {k for k in raw_grid if "." not in k}, set(GRID_KEYS), GRID_KEYS)
    grid = {k: _as_list(where, k, raw_grid[k]) for k in GRID_KEYS}
    bad = [t for t in grid["task"] if t not in TASKS]
    if bad:
        raise _one_line(f"{where}: unknown task(s) {bad} in grid.task; valid: {sorted(TASKS)}")
    inits = data.get("inits", {})
    shadow = sorted(set(inits) & set(INITS))
    if shadow:
        raise _one_line(f"{where} [inits.{shadow[0]}]: {shadow[0]!r} is a built-in init; give the variant "
                        "another name (its rows would be labelled as the built-in's)")
    for iname, variant in inits.items():
        if not _SAFE_NAME.match(iname):
            raise _one_line(f"{where} [inits.{iname}]: the name must be letters, digits, '.', '_' or '-' "
                            "(it is part of the run folder name)")
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

    axes = {path: _axis_values(where, path, raw_grid[path]) for path in sorted(raw_grid) if "." in path}
    for path in axes:
        _check_axis_path(where, path, grid)
    grid.update(axes)
    _check_no_repeats(where, grid, {k for group in zips for k in group})

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
    _check_model_keys(where, model, grid["layer"], set(axes))

    ev = dict(data.get("eval", {}))
    _check_keys(f"{where} [eval]", set(ev), EVAL_KEYS)
    _check_eval(where, ev)
    sweep_name = meta.get("name", name)
    if not isinstance(sweep_name, str) or not _SAFE_NAME.match(sweep_name) or ".." in sweep_name:
        raise _one_line(f"{where} [sweep]: name={sweep_name!r} must be a plain folder name (letters, digits, "
                        "'.', '_', '-'; no '/' or '..'): it is the default output folder runs/<name>")
    metric = meta.get("metric", "final_token_acc")
    columns = result_columns(grid, ev)
    if metric not in columns:
        raise _one_line(f"{where} [sweep]: metric={metric!r} is not a column of results.csv; "
                        f"numeric columns: {', '.join(columns)}")

    best_over = meta.get("best_over", [])
    if isinstance(best_over, str):
        best_over = [best_over]
    if not isinstance(best_over, list) or not all(isinstance(a, str) for a in best_over):
        raise _one_line(f"{where} [sweep]: best_over must be a list of extra grid axes (dotted paths), "
                        f"got {best_over!r}")
    bad = [a for a in best_over if a not in axes]
    if bad:
        raise _one_line(f"{where} [sweep]: best_over names {bad}, which are not extra grid axes of this file; "
                        f"its extra axes: {sorted(axes) or 'none'}")

    cfg = SweepConfig(
        name=sweep_name,
        grid=grid,
        model=model,
        train=train,
        tasks=tasks,
        inits=inits,
        eval=ev,
        description=meta.get("description", ""),
        metric=metric,
        zips=zips,
        best_over=tuple(best_over),
    )
    # Build every point's task, train config and model config, so that bad values fail now,
    # not mid-sweep.
    try:
        for variant in inits.values():
            knobs = dict(variant.get("init_cfg", {}))
            if knobs.get("horizon") == HORIZON_SEQ_LEN:
                knobs["horizon"] = 1  # resolved per point (init_for); the other knobs are checked here
            MimeticConfig(**knobs)
    except (ValueError, TypeError) as e:
        raise _one_line(f"{where}: {e}") from None
    points = cfg.points()
    for point in points:
        try:
            task = cfg.task_for(point)
            for n in ev.get("lengths", []):
                task.length_eval_task(n)  # what rows.length_evals tests at n
            TrainConfig(**cfg.train_for(point))
            _check_model_config(cfg, point, task.vocab_size)
        except (ValueError, TypeError) as e:
            at = f" (point {point.run_id})" if axes else ""
            raise _one_line(f"{where}: {e}{at}") from None
    clash = sorted(r for r, n in Counter(p.run_id for p in points).items() if n > 1)
    if clash:
        raise _one_line(f"{where} [grid]: different axis values give the same run folder {clash[0]}")
    return cfg


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: The numeric columns of results.csv that every finished point has (see ``rows.result_row``).
RESULT_COLUMNS = ("final_token_acc", "final_seq_acc", "final_loss", "best_token_acc", "best_seq_acc",
                  "best_step", "steps_to_target", "steps", "elapsed_s", "tokens", "n_params", "seq_len")


def result_columns(grid: dict[str, list], ev: dict[str, Any]) -> list[str]:
    """The numeric columns a sweep's results.csv will have: RESULT_COLUMNS, the
    ``gen_*@<n>`` columns of its [eval] lengths and its numeric grid keys."""
    gen = [f"gen_{k}@{n}" for n in ev.get("lengths", []) for k in ("token_acc", "seq_acc")]
    return [*RESULT_COLUMNS, *gen, "d_state", "length", "seed", *sorted(k for k in grid if "." in k)]


def _check_eval(where: str, ev: dict[str, Any]) -> None:
    """[eval]: lengths a list of ints >= 1, batches and batch_size ints >= 1 (checked now,
    not after the first point trained)."""
    def positive(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    lengths = ev.get("lengths", [])
    if not isinstance(lengths, list) or not all(positive(n) for n in lengths):
        raise _one_line(f"{where} [eval]: lengths={lengths!r} must be a list of integers >= 1")
    for key in ("batches", "batch_size"):
        if key in ev and not positive(ev[key]):
            raise _one_line(f"{where} [eval]: {key}={ev[key]!r} must be an integer >= 1")


def _zip_groups(where: str, tables: Any, raw_grid: dict[str, Any]) -> list[tuple[str, ...]]:
    """The ``[[grid.zip]]`` tables: each a group of keys whose lists are taken together, the
    i-th values of one point, instead of crossed. Their lists go into ``raw_grid`` (so they
    are checked as any grid key or axis is); returns the groups' keys."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise _one_line(f"{where} [grid]: zip must be [[grid.zip]] tables of equally long lists")
    groups = []
    for i, table in enumerate(tables):
        at = f"{where} [[grid.zip]] #{i + 1}"
        flat = _flatten_grid(at, table)
        if len(flat) < 2:
            raise _one_line(f"{at}: needs at least two keys to zip, got {sorted(flat)}")
        lengths = {k: len(v) if isinstance(v, list) else -1 for k, v in flat.items()}
        if min(lengths.values()) < 1 or len(set(lengths.values())) != 1:
            raise _one_line(f"{at}: every key needs a non-empty list, all of one length; got lengths "
                            + ", ".join(f"{k}={n if n >= 0 else 'not a list'}" for k, n in lengths.items()))
        for key, values in flat.items():
            if key in raw_grid:
                raise _one_line(f"{at}: {key} is also a [grid] key; give it in one place")
            raw_grid[key] = values
        groups.append(tuple(flat))
    return groups


def _flatten_grid(where: str, raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """[grid] with nested tables turned into dotted keys: ``{"model": {"d_model": v}}`` and
    ``{"model.d_model": v}`` both give ``{"model.d_model": v}``."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        items = _flatten_grid(where, value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
        for path, v in items.items():
            if path in flat:
                raise _one_line(f"{where} [grid]: {path} given twice (as a dotted key and as a table)")
            flat[path] = v
    return flat


def _axis_values(where: str, path: str, value: Any) -> list:
    values = _as_list(where, path, value)
    if any(isinstance(v, dict) for v in values):
        raise _one_line(f"{where} [grid]: {path} values must not be tables; sweep their entries ({path}.<key>)")
    return [freeze_value(v) for v in values]


def _check_axis_path(where: str, path: str, grid: dict[str, list]) -> None:
    """Reject an extra grid axis that names no settable field (one-line error naming it)."""
    at = f"{where} [grid]: {path}"
    root, *keys = path.split(".")
    if root not in AXIS_ROOTS:
        raise _one_line(f"{at}: unknown axis; extra axes are model.<field>, train.<field> or tasks.<task>.<knob>")
    owned = [q for q in AXIS_OWNERS if path == q or path.startswith(q + ".")]
    if owned:
        raise _one_line(f"{at} is set by {AXIS_OWNERS[owned[0]]}, it cannot be an extra axis")
    if root == "train":
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        if len(keys) != 1 or keys[0] not in fields:
            raise _one_line(f"{at}: unknown TrainConfig field (expected train.<field>)")
        if keys[0] in TRAIN_RESERVED:
            raise _one_line(f"{at} is set by the sweep runner, it cannot be an extra axis")
    elif root == "tasks":
        if len(keys) != 2:
            raise _one_line(f"{at}: expected tasks.<task>.<knob>")
        tname, knob = keys
        if tname not in grid["task"]:
            raise _one_line(f"{at}: task {tname!r} is not in grid.task {grid['task']}")
        cls = TASKS[tname]
        if knob == cls.length_knob:
            raise _one_line(f"{at} is the length knob of {tname}, set by grid.length")
        if knob not in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
            raise _one_line(f"{at}: unknown knob of task {tname}")
    else:
        _check_model_path(at, keys, grid["layer"])


def _check_model_path(at: str, keys: list[str], layers: list[str]) -> None:
    """``keys``: the path below ``model.`` (``["d_model"]``, ``["ssm_cfg", "Mamba2", "headdim"]``)."""
    field, rest = keys[0], keys[1:]
    if field not in {f.name for f in dataclasses.fields(MambaConfig)}:
        raise _one_line(f"{at}: unknown MambaConfig field {field}")
    if field not in ("ssm_cfg", "attn_cfg"):
        if rest:
            raise _one_line(f"{at}: model.{field} is not a table")
        return
    if field == "attn_cfg":
        targets, classes = [ATTENTION], {ATTENTION: MHA}
    else:
        targets = [rest.pop(0)] if rest and rest[0] in SSM_LAYERS else [x for x in SSM_LAYERS if x in layers]
        classes = LAYER_TYPES
    if len(rest) != 1:
        form = "model.ssm_cfg[.<layer>].<arg>" if field == "ssm_cfg" else "model.attn_cfg.<arg>"
        raise _one_line(f"{at}: expected {form}")
    if rest[0] in ("layer", "d_state") and field == "ssm_cfg":
        raise _one_line(f"{at} is set by grid.{rest[0]}, it cannot be an extra axis")
    if not targets:
        raise _one_line(f"{at} applies to no point: grid.layer has no SSM layer")
    absent = [t for t in targets if t not in layers]
    if absent:
        raise _one_line(f"{at} applies to no point: {absent[0]} is not in grid.layer")
    bad = [t for t in targets if rest[0] not in _accepted_kwargs(classes[t])]
    if bad:
        raise _one_line(f"{at}: {bad[0]} has no argument {rest[0]}")


def mamba_config(model_cfg: dict[str, Any], vocab_size: int, point: GridPoint, init: str,
                 init_cfg: dict[str, Any]):
    """The ``MambaConfig`` of a grid point: ``model_cfg`` (its [model] table with the point's
    axes) with the grid's layer type, d_state and init. ``ssm_cfg`` entries whose value is a
    table named after a layer type apply to that type only; attention points make every layer
    attention (``attn_layer_idx = all``) with ``attn_cfg``."""
    kwargs = {k: v for k, v in model_cfg.items() if k != "ssm_cfg"}
    if point.layer == ATTENTION:
        kwargs["attn_layer_idx"] = list(range(kwargs["n_layer"]))
    else:
        ssm = model_cfg.get("ssm_cfg", {})
        # [model.ssm_cfg]'s shared keys go to the layer types that take them (LinearAttention
        # has no conv or dt arguments); a key no grid layer takes is refused at load.
        takes = _accepted_kwargs(LAYER_TYPES[point.layer])
        shared = {k: v for k, v in ssm.items() if not isinstance(v, dict) and k in takes}
        kwargs["ssm_cfg"] = {**shared, **ssm.get(point.layer, {}), "layer": point.layer, "d_state": point.d_state}
        kwargs.pop("attn_cfg", None)  # pure SSM: attention settings only matter for baselines
    return MambaConfig(**kwargs, vocab_size=vocab_size, init=init, init_cfg=init_cfg)


def _check_model_config(cfg: SweepConfig, point: GridPoint, vocab_size: int) -> None:
    """Build the ``MambaConfig`` that ``runner.build_model`` would build for ``point``, so that
    its checks run now."""
    mamba_config(cfg.model_for(point), vocab_size, point, *cfg.init_for(point))


def check_default_models(cfg: SweepConfig, points: list[GridPoint], where: str) -> None:
    """What ``runner.build_model`` (``MambaLM``) would refuse in ``points`` and one mixer
    argument cannot show on its own: Mamba-2's ``headdim`` dividing ``expand * d_model`` and
    ``ngroups`` dividing the heads, attention's ``num_heads_kv`` and ``rotary_emb_dim``
    (an MHA built on the meta device: no memory, no compute). It then fails before the first
    point trains, not at the point that has it. Only for the default model factory: a custom
    one may read ``[model]`` its own way (``load_sweep`` checks what holds for every factory)."""
    seen = set()
    for point in points:
        config = mamba_config(cfg.model_for(point), cfg.task_for(point).vocab_size, point, *cfg.init_for(point))
        kwargs = config.attn_cfg if config.attn_layer_idx else config.mixer_kwargs()
        key = (point.layer, config.d_model, repr(sorted(kwargs.items())))
        if key in seen or point.layer not in (ATTENTION, MAMBA2):
            continue
        seen.add(key)
        try:
            if point.layer == ATTENTION:
                MHA(config.d_model, **kwargs, device="meta")
            else:
                mamba2_heads(config.d_model, kwargs.get("expand", 2), kwargs.get("headdim", 64),
                             kwargs.get("ngroups", 1))
        except ValueError as e:
            raise _one_line(f"{where}: point {point.run_id}: {e}") from None


def _check_model_keys(where: str, model: dict[str, Any], layers: list[str], axes: set[str]) -> None:
    """Check the [model] table's keys; a key that an extra axis (``axes``) sets is not required."""
    allowed = {f.name for f in dataclasses.fields(MambaConfig)} - MODEL_RESERVED
    required = tuple(k for k in ("d_model", "n_layer") if f"model.{k}" not in axes)
    _check_keys(f"{where} [model]", set(model), allowed, required)
    ssm_cfg = model.get("ssm_cfg", {})
    tables = sorted(k for k, v in ssm_cfg.items() if isinstance(v, dict) and k not in SSM_LAYERS)
    if tables:
        raise _one_line(f"{where} [model.ssm_cfg.{tables[0]}]: not a layer type; per-layer tables are "
                        f"{', '.join(SSM_LAYERS)}")
    reserved = sorted({"layer", "d_state"} & set(ssm_cfg))
    if reserved:
        raise _one_line(f"{where} [model.ssm_cfg]: {', '.join(reserved)} set by the grid, remove them")
    ssm_layers = [x for x in SSM_LAYERS if x in layers]
    for key in (k for k, v in ssm_cfg.items() if not isinstance(v, dict)):
        if ssm_layers and not any(key in _accepted_kwargs(LAYER_TYPES[x]) for x in ssm_layers):
            raise _one_line(f"{where} [model.ssm_cfg]: {key} is an argument of none of the grid's "
                            f"SSM layers ({', '.join(ssm_layers)})")
    heads = "num_heads" in model.get("attn_cfg", {}) or "model.attn_cfg.num_heads" in axes
    if ATTENTION in layers and not heads:
        raise _one_line(f"{where} [model.attn_cfg]: missing key num_heads (needed for layer 'attention')")


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep TOML file; the sweep's default name is the file's stem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file not found: {path}" + (" (a folder; give its .toml file)"
                                                                    if path.is_dir() else ""))
    try:
        data = tomllib.loads(path.read_text())
    except UnicodeDecodeError:
        raise _one_line(f"{path}: not a text (UTF-8) TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise _one_line(f"{path}: invalid TOML: {e}") from None
    return parse_sweep(data, name=path.stem, where=str(path))
