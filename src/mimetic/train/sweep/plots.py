"""Paper-style plots of sweep results: accuracy vs length and vs state size, default vs mimetic.

Every point is the mean over seeds with an error bar of one standard deviation (population
std; 0 with a single seed), each seed's value a faint dot behind it. SSM layer types get one
panel each (``split=True``: one per layer type and value of the other axis); colour = init
(default blue, mimetic orange, named variants other colours); marker/line style = the other
axis' value (d_state or length); attention points (if any) are the black dashed baseline in
every panel. Rows that differ in an extra grid axis (``model.d_model``, ``train.lr``, ...) are
separate series, labelled ``<path>=<value>``.

The figures are bare :class:`matplotlib.figure.Figure` objects written to files: pyplot and its
global backend are never touched, so importing or calling this in a notebook changes nothing
there, and no display is needed on servers or in CI.
"""
from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ...layer_kinds import ATTENTION, SSM_LAYERS
from ...tasks import TASKS
from .config import axis_columns, freeze_value

INIT_COLORS = {"default": "tab:blue", "mimetic": "tab:orange"}
EXTRA_COLORS = ["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


def _init_colors(rows: list[dict[str, Any]]) -> dict[str, str]:
    """default/mimetic keep their colours; named init variants (ablations) get the next ones."""
    names = [n for n in INIT_COLORS if any(r["init"] == n for r in rows)]
    names += sorted({r["init"] for r in rows} - set(INIT_COLORS))
    extra = iter(EXTRA_COLORS * 4)
    return {n: INIT_COLORS.get(n) or next(extra) for n in names}
STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", "-"), ("P", "--")]
ATTN_STYLES = ["--", ":", "-.", "-"]


def _axis_combos(rows: list[dict[str, Any]], paths: list[str]) -> list[tuple]:
    """The distinct tuples of extra-axis values in ``rows``, in first-seen order."""
    return list(dict.fromkeys(_combo(r, paths) for r in rows))


def _combo(row: dict[str, Any], paths: list[str]) -> tuple:
    return tuple(freeze_value(row.get(p)) for p in paths)


def _label(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def _combo_label(paths: list[str], combo: tuple, combos: list[tuple]) -> str:
    """``path=value, ...`` for a series when the panel has several axis combinations, else ""."""
    if len(combos) < 2:
        return ""
    return ", ".join(f"{p}={v}" for p, v in zip(paths, combo) if v is not None)


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, (sum((v - mean) ** 2 for v in values) / n) ** 0.5


def _values_by_x(rows: list[dict[str, Any]], x_key: str, metric: str) -> dict[Any, list[float]]:
    """``metric``'s values per ``x_key`` value, sorted by it; runs without a value left out."""
    by_x: dict[Any, list[float]] = {}
    for r in rows:
        if r.get(metric) is not None:
            by_x.setdefault(r[x_key], []).append(float(r[metric]))
    return dict(sorted(by_x.items()))


def _series(rows: list[dict[str, Any]], x_key: str, metric: str) -> tuple[list, list, list]:
    by_x = _values_by_x(rows, x_key, metric)
    stats = [_mean_std(v) for v in by_x.values()]
    return list(by_x), [m for m, _ in stats], [s for _, s in stats]


def _save(fig: Figure, path: Path, title: str) -> Path:
    """Title ``fig``, lay it out and write it to ``path`` (its folder made if missing)."""
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _plot_axis(
    rows: list[dict[str, Any]], task: str, x_key: str, group_key: str, metric: str, path: Path, title: str,
    split: bool = False,
) -> Path:
    """One figure: a row of panels per layer type, with one panel per ``group_key`` value
    across it when ``split`` (else all values in one panel, told apart by marker and line)."""
    task_rows = [r for r in rows if r["task"] == task]
    layers = [x for x in SSM_LAYERS if any(r["layer"] == x for r in task_rows)]
    attn = [r for r in task_rows if r["layer"] == ATTENTION]
    all_groups = sorted({r[group_key] for r in task_rows if r["layer"] != ATTENTION and r[group_key] is not None})
    panel_groups = [[g] for g in all_groups] if split and all_groups else [all_groups]
    panels = [(layer, groups) for layer in layers or [ATTENTION] for groups in panel_groups]
    n_cols = len(panel_groups) if split else len(panels)
    n_rows = len(panels) // n_cols
    fig = Figure(figsize=(4.2 * n_cols, 3.4 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey=True)
    x_label = {"length": TASKS[task].length_knob, "d_state": "state size (d_state)"}.get(x_key, x_key)
    g_label = TASKS[task].length_knob if group_key == "length" else "d_state"
    paths = [p for p in axis_columns(task_rows) if p != x_key]
    attn_combos = _axis_combos(attn, paths)
    for ax, (layer, groups) in zip(axes.flat, panels):
        combos = _axis_combos([r for r in task_rows if r["layer"] == layer], paths)
        for init, color in _init_colors([r for r in task_rows if r["layer"] != ATTENTION]).items():
            for g, (ci, combo) in itertools.product(groups, enumerate(combos)):
                sel = [r for r in task_rows if r["layer"] == layer and r["init"] == init and r[group_key] == g
                       and _combo(r, paths) == combo]
                if not sel:
                    continue
                xs, ms, ss = _series(sel, x_key, metric)
                # numbered over all groups, so that a value keeps its marker across split panels
                marker, ls = STYLES[(all_groups.index(g) * len(combos) + ci) % len(STYLES)]
                g_part = "" if len(groups) == 1 else f"{g_label}={g}"
                label = _label(init, g_part, _combo_label(paths, combo, combos))
                seeds = _values_by_x(sel, x_key, metric)
                ax.scatter([x for x, vs in seeds.items() for _ in vs], [v for vs in seeds.values() for v in vs],
                           s=10, color=color, alpha=0.35, linewidths=0, zorder=1)
                ax.errorbar(xs, ms, yerr=ss, color=color, marker=marker, ls=ls, capsize=3, label=label, zorder=2)
        if attn:
            if x_key != "d_state":  # attention varies along the axis: a series per length, as the SSMs
                attn_groups = [None] if x_key == "length" else groups
                for (gi, g), (ci, combo) in itertools.product(enumerate(attn_groups), enumerate(attn_combos)):
                    sel = [r for r in attn if _combo(r, paths) == combo and (g is None or r[group_key] == g)]
                    if not sel:
                        continue
                    xs, ms, ss = _series(sel, x_key, metric)
                    g_part = f"{g_label}={g}" if g is not None and len(groups) > 1 else ""
                    ax.errorbar(xs, ms, yerr=ss, color="black", marker="x",
                                ls=ATTN_STYLES[(gi * len(attn_combos) + ci) % len(ATTN_STYLES)], capsize=3,
                                label=_label("attention", g_part, _combo_label(paths, combo, attn_combos)))
            else:  # attention has no state: a horizontal line per length
                for g, (ci, combo) in itertools.product(groups, enumerate(attn_combos)):
                    sel = [r for r in attn if r["length"] == g and _combo(r, paths) == combo]
                    _, ms, _ = _series(sel, "length", metric)
                    if ms:
                        g_part = f"{g_label}={g}" if len(groups) > 1 else ""
                        gi = all_groups.index(g) * len(attn_combos) + ci
                        ax.axhline(ms[0], color="black", ls=STYLES[gi % len(STYLES)][1], lw=1,
                                   label=_label("attention", g_part, _combo_label(paths, combo, attn_combos)))
        all_x = sorted({r[x_key] for r in task_rows if r[x_key] is not None})
        if len(all_x) > 1 and all_x[-1] / max(all_x[0], 1) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(all_x, [str(x) for x in all_x])  # ticks at the swept values only
        ax.minorticks_off()
        ax.set_title(_label(layer, f"{g_label}={groups[0]}" if split and len(groups) == 1 else ""))
        ax.set_xlabel(x_label)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for row_axes in axes:
        row_axes[0].set_ylabel(metric.replace("_", " ") + " (mean +- std; dots: seeds)")
    _legend_of_all_panels(axes)
    return _save(fig, path, f"{title}: {task}")


def _legend_of_all_panels(axes) -> None:
    """One legend, in the last panel of the first row, of every series drawn in any panel
    (each label once): panels need not share their series (a baseline with one init)."""
    entries: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        axes[0][-1].legend(list(entries.values()), list(entries), fontsize=7, loc="best")


def plot_sweep(
    rows: list[dict[str, Any]], out_dir: str | Path, metric: str = "final_token_acc", title: str = "sweep",
    split: bool = False,
) -> list[Path]:
    """Draw ``<task>_acc_vs_length.png`` and ``<task>_acc_vs_d_state.png`` into ``out_dir`` for
    each task with at least two lengths / two state sizes, and ``<task>_acc_vs_<name>.png``
    for each numeric extra axis with two values or more (``model.d_model``: ``_vs_d_model``).
    ``rows`` are results.csv rows (as dicts: task, init, layer, d_state, length, seed, and
    ``metric``). ``split``: a panel per
    layer type and d_state (per length in the d_state plot) instead of one per layer type.
    Returns the files."""
    out = Path(out_dir)
    paths = []
    for task in sorted({r["task"] for r in rows}):
        task_rows = [r for r in rows if r["task"] == task]
        lengths = {r["length"] for r in task_rows}
        d_states = {r["d_state"] for r in task_rows if r["d_state"] is not None}
        if len(lengths) >= 2:
            paths.append(_plot_axis(rows, task, "length", "d_state", metric, out / f"{task}_acc_vs_length.png", title,
                                    split))
        if len(d_states) >= 2:
            paths.append(_plot_axis(rows, task, "d_state", "length", metric, out / f"{task}_acc_vs_d_state.png", title,
                                    split))
        for path in axis_columns(task_rows):  # extra axes by dotted path, e.g. model.d_model
            values = {r.get(path) for r in task_rows}
            zipped_with_length = len({(r["length"], r.get(path)) for r in task_rows}) == len(lengths)
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if len(values) >= 2 and numeric and not zipped_with_length:
                name = path.rsplit(".", 1)[-1]
                paths.append(_plot_axis(rows, task, path, "length", metric, out / f"{task}_acc_vs_{name}.png",
                                        title, split))
        if len(_eval_lengths(task_rows, GEN_METRICS[0])) >= 2:
            paths.append(_plot_generalization(task_rows, out / f"{task}_gen_vs_length.png", f"{title}: {task}"))
        if len({r["init"] for r in task_rows if r["layer"] != ATTENTION}) >= 3:
            paths.append(_plot_by_init(task_rows, metric, out / f"{task}_acc_by_init.png", f"{title}: {task}"))
    return paths


def _plot_by_init(rows: list[dict[str, Any]], metric: str, path: Path, title: str) -> Path:
    """An ablation's picture: per SSM layer type a panel, per init a column with every seed's
    value (dots) and the mean +- std (bar); one series per (length, d_state) combination."""
    layers = [x for x in SSM_LAYERS if any(r["layer"] == x for r in rows)]
    inits = list(dict.fromkeys(r["init"] for r in rows if r["layer"] != ATTENTION))
    combos = sorted({(r["length"], r["d_state"]) for r in rows if r["layer"] != ATTENTION})
    fig = Figure(figsize=(max(4.2, 0.55 * len(inits) + 1.5) * len(layers), 3.8))
    axes = fig.subplots(1, len(layers), squeeze=False, sharey=True)
    width = 0.7 / len(combos)
    for ax, layer in zip(axes[0], layers):
        for ci, (length, d_state) in enumerate(combos):
            offset = (ci - (len(combos) - 1) / 2) * width
            marker, _ = STYLES[ci % len(STYLES)]
            for xi, init in enumerate(inits):
                values = [float(r[metric]) for r in rows if r["layer"] == layer and r["init"] == init
                          and (r["length"], r["d_state"]) == (length, d_state) and r.get(metric) is not None]
                if not values:
                    continue
                mean, std = _mean_std(values)
                jitter = [offset + width * 0.3 * ((i % 5) - 2) / 2 for i in range(len(values))]
                ax.scatter([xi + j for j in jitter], values, s=9, color="gray", alpha=0.6, zorder=2)
                label = f"length={length}, d_state={d_state}" if len(combos) > 1 and xi == 0 else None
                ax.errorbar([xi + offset], [mean], yerr=[std], fmt=marker, color="black", capsize=4, zorder=3,
                            label=label)
        ax.set_xticks(range(len(inits)), inits, rotation=40, ha="right", fontsize=8)
        ax.set_title(layer)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel(metric.replace("_", " ") + " (mean +- std; dots: seeds)")
    if len(combos) > 1:
        axes[0][-1].legend(fontsize=7, loc="best")
    return _save(fig, path, title)


#: the [eval] metrics of a row, ``<name>@<length>`` per evaluated length
GEN_METRICS = ("gen_token_acc", "gen_seq_acc")


def _eval_lengths(rows: list[dict[str, Any]], name: str) -> list[int]:
    """The lengths n with a ``<name>@n`` value in some row, ascending."""
    found = {int(k.split("@", 1)[1]) for r in rows for k, v in r.items()
             if k.startswith(name + "@") and v not in (None, "")}
    return sorted(found)


def _plot_generalization(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Length generalization: accuracy at each [eval] length, one panel per metric (token and
    sequence accuracy), one line per (layer, init, training length) with a band of one std over
    seeds; a dotted vertical line at each training length. Log-2 x axis when the lengths span
    more than 16x (the Mamba paper's 2^6 .. 2^20)."""
    metrics = [m for m in GEN_METRICS if _eval_lengths(rows, m)]
    colors = _init_colors(rows)
    fig = Figure(figsize=(5.2 * len(metrics), 3.9))
    axes = fig.subplots(1, len(metrics), squeeze=False, sharey=True)
    series = sorted({(r["layer"], r["init"], r["length"]) for r in rows},
                    key=lambda k: (k[0] == ATTENTION, k[0], k[1] != "default", k[1], k[2]))
    layer_styles = {layer: STYLES[i % len(STYLES)] for i, layer in
                    enumerate(dict.fromkeys(k[0] for k in series))}
    for ax, metric in zip(axes[0], metrics):
        lengths = _eval_lengths(rows, metric)
        for layer, init, train_len in series:
            group = [r for r in rows if (r["layer"], r["init"], r["length"]) == (layer, init, train_len)]
            xs, means, stds = [], [], []
            for n in lengths:
                values = [float(r[f"{metric}@{n}"]) for r in group if r.get(f"{metric}@{n}") not in (None, "")]
                if values:
                    mean, std = _mean_std(values)
                    xs.append(n), means.append(mean), stds.append(std)
            if not xs:
                continue
            marker, line = layer_styles[layer]
            color = "black" if layer == ATTENTION else colors[init]
            label = _label(layer, "" if layer == ATTENTION and init == "default" else init,
                           f"trained at {train_len}" if len({k[2] for k in series}) > 1 else "")
            ax.plot(xs, means, marker=marker, linestyle=line, color=color, markersize=4, label=label)
            ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=color, alpha=0.12, linewidth=0)
        for train_len in sorted({k[2] for k in series}):
            ax.axvline(train_len, color="gray", linestyle=":", linewidth=1)
        if lengths[-1] > 16 * lengths[0]:
            ax.set_xscale("log", base=2)
        ax.set_xlabel("test length (dotted: training length)")
        ax.set_ylabel(metric.replace("_", " ") + " (mean +- std over seeds)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    return _save(fig, path, title)


#: panels above which ``plot_history`` leaves a task's curve to ``history.csv``
MAX_HISTORY_PANELS = 12
#: evaluations a run needs for its history to be a curve worth drawing (a smoke sweep's two
#: are not, and the figure would be most of such a sweep's time)
MIN_HISTORY_EVALS = 3


def plot_history(records: list[dict[str, Any]], out_dir: str | Path, metric: str = "token_acc",
                 title: str = "sweep") -> list[Path]:
    """Draw ``<task>_acc_vs_steps.png`` into ``out_dir`` from the eval ``records`` of
    ``history.collect_history``: ``metric`` against training steps, one panel per layer type
    and shape (length, d_state and extra axes other than those an ensemble may vary: init,
    seed, ``train.*``), one line per init (and ``train.*`` value) with the mean over seeds
    and a band of one std, each seed a faint line. Steps where only some seeds have a value
    (runs cut off, or stopped early) average those present. A task whose grid gives more
    than ``MAX_HISTORY_PANELS`` panels, or whose runs have fewer than ``MIN_HISTORY_EVALS``
    evaluations each, is not drawn (its ``history.csv`` has the records). Returns the files."""
    out = Path(out_dir)
    paths = []
    for task in sorted({r["task"] for r in records}):
        recs = [r for r in records if r["task"] == task and r.get(metric) is not None]
        extra = axis_columns(recs)
        series_axes = [p for p in extra if p.startswith("train.")]
        shape_axes = [p for p in extra if p not in series_axes]
        panel_key = lambda r: (r["layer"], r["length"], r["d_state"], _combo(r, shape_axes))  # noqa: E731
        panels = sorted({panel_key(r) for r in recs},
                        key=lambda k: (k[0] not in SSM_LAYERS, k[0], k[1], k[2] or 0, str(k[3])))
        evals_per_run = Counter(r["run"] for r in recs)
        if not panels or len(panels) > MAX_HISTORY_PANELS or max(evals_per_run.values()) < MIN_HISTORY_EVALS:
            continue
        n_cols = min(len(panels), 3)
        n_rows = -(-len(panels) // n_cols)
        fig = Figure(figsize=(4.6 * n_cols, 3.5 * n_rows))
        axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey=True)
        colors = _init_colors(recs)
        knob = TASKS[task].length_knob
        for ax, key in zip(axes.flat, panels):
            layer, length, d_state, shape = key
            sel = [r for r in recs if panel_key(r) == key]
            lines = list(dict.fromkeys((r["init"], _combo(r, series_axes)) for r in sel))
            for li, (init, combo) in enumerate(lines):
                runs = [r for r in sel if (r["init"], _combo(r, series_axes)) == (init, combo)]
                color = "black" if layer == ATTENTION else colors[init]
                _, ls = STYLES[li % len(STYLES)] if len(series_axes) else ("", "-")
                by_run: dict[str, list[dict[str, Any]]] = {}
                for r in runs:
                    by_run.setdefault(r["run"], []).append(r)
                for own in by_run.values():
                    ax.plot([r["step"] for r in own], [float(r[metric]) for r in own], color=color, lw=0.6,
                            alpha=0.3)
                steps, means, stds = _series(runs, "step", metric)
                label = _label(init, _combo_label(series_axes, combo, [c for _, c in lines]))
                ax.plot(steps, means, color=color, ls=ls, lw=1.6, label=label)
                ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=color, alpha=0.15, linewidth=0)
            shape_part = ", ".join(f"{p}={v}" for p, v in zip(shape_axes, shape) if v is not None)
            ax.set_title(_label(layer, f"{knob}={length}", "" if d_state is None else f"d_state={d_state}",
                                shape_part), fontsize=9)
            ax.set_xlabel("training step")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        for row_axes in axes:
            row_axes[0].set_ylabel(metric.replace("_", " ") + " (mean +- std; lines: seeds)")
        _legend_of_all_panels(axes)
        paths.append(_save(fig, out / f"{task}_acc_vs_steps.png", f"{title}: {task}"))
    return paths
