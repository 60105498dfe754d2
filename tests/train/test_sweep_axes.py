"""Extra sweep grid axes by dotted path: ``model.*``, ``train.*``, ``tasks.<task>.*``."""
import csv
import json
import subprocess
import sys

import pytest
import torch

from mimetic.train.sweep import GRID_KEYS, GridPoint, load_sweep, parse_sweep, plots, run_sweep, summarize

from .test_sweep import EXPERIMENTS, TINY, tiny_factory, write_toml


def with_axes(**axes):
    """TINY plus extra grid axes (keyword names with "__" for "."), as a fresh dict."""
    data = json.loads(json.dumps(TINY))
    data["grid"].update({k.replace("__", "."): v for k, v in axes.items()})
    return data


def test_axes_multiply_points_and_extend_run_ids():
    cfg = parse_sweep(with_axes(model__d_model=[8, 16], train__lr=[1e-3, 2e-3]))
    assert cfg.axis_paths == ["model.d_model", "train.lr"]
    points = cfg.points()
    assert len(points) == 20 * 4
    p = points[0]
    assert p.axes == (("model.d_model", 8), ("train.lr", 1e-3))
    assert p.run_id == "copy-default-Mamba2-d2-L2-s0-model.d_model=8-train.lr=0.001"
    assert len({q.run_id for q in points}) == len(points)
    assert p.to_dict() == dict(task="copy", init="default", layer="Mamba2", d_state=2, length=2, seed=0,
                               **{"model.d_model": 8, "train.lr": 1e-3})


def test_nested_tables_and_quoted_keys_give_the_same_points(tmp_path):
    head = write_toml(tmp_path / "base.toml", TINY).read_text()
    # [grid] is the second table written; the axes go right after its keys.
    grid_end = head.index("\n[", head.index("[grid]")) + 1
    forms = {
        "quoted": '"model.d_model" = [8, 16]\n"tasks.copy.vocab" = [4, 5]\n',
        "dotted": "model.d_model = [8, 16]\ntasks.copy.vocab = [4, 5]\n",
        "tables": "[grid.model]\nd_model = [8, 16]\n[grid.tasks.copy]\nvocab = [4, 5]\n",
    }
    points = {}
    for name, text in forms.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(head[:grid_end] + text + head[grid_end:])
        points[name] = load_sweep(path).points()
    assert points["quoted"] == points["dotted"] == points["tables"]
    assert len(points["quoted"]) == 80
    # and the dict form of parse_sweep
    nested = json.loads(json.dumps(TINY))
    nested["grid"]["model"] = {"d_model": [8, 16]}
    nested["grid"]["tasks"] = {"copy": {"vocab": [4, 5]}}
    assert parse_sweep(nested).points() == points["quoted"]


@pytest.mark.parametrize("name", sorted(p.name for p in EXPERIMENTS.glob("*.toml")))
def test_run_ids_of_shipped_files_are_unchanged(name):
    """Files without extra axes keep the run folders they had before axes existed; files with
    axes (written since) add their suffixes to the same base."""
    cfg = load_sweep(EXPERIMENTS / name)
    for p in cfg.points():
        d = "dNA" if p.d_state is None else f"d{p.d_state}"
        base = f"{p.task}-{p.init}-{p.layer}-{d}-L{p.length}-s{p.seed}"
        if cfg.axis_paths:
            assert p.run_id.startswith(base + "-") and len(p.axes) == len(cfg.axis_paths)
            continue
        assert p.axes == ()
        assert p.run_id == base
        assert list(p.to_dict()) == list(GRID_KEYS)


def test_run_id_examples_are_unchanged():
    assert GridPoint("copy", "mimetic", "Mamba2", 16, 64, 0).run_id == "copy-mimetic-Mamba2-d16-L64-s0"
    assert GridPoint("mqar", "default", "attention", None, 128, 2).run_id == "mqar-default-attention-dNA-L128-s2"


def test_model_train_task_for_apply_the_overrides():
    data = with_axes(
        model__d_model=[16],
        model__ssm_cfg__d_conv=[2],
        model__ssm_cfg__Mamba2__expand=[3],
        model__attn_cfg__num_heads=[4],
        train__lr=[2e-3],
        train__betas=[[0.8, 0.9]],
        tasks__copy__vocab=[7],
    )
    data["model"]["ssm_cfg"] = {"d_conv": 4, "Mamba2": {"headdim": 4}}
    cfg = parse_sweep(data)
    ssm = next(p for p in cfg.points() if p.layer == "Mamba2")
    attn = next(p for p in cfg.points() if p.layer == "attention")

    assert cfg.model_for(ssm) == {"d_model": 16, "n_layer": 1, "attn_cfg": {"num_heads": 2},
                                  "ssm_cfg": {"d_conv": 2, "Mamba2": {"headdim": 4, "expand": 3}}}
    # attention points drop the ssm_cfg axes, SSM points the attn_cfg ones
    assert dict(attn.axes)["model.ssm_cfg.d_conv"] is None and dict(ssm.axes)["model.attn_cfg.num_heads"] is None
    assert cfg.model_for(attn) == {"d_model": 16, "n_layer": 1, "attn_cfg": {"num_heads": 4},
                                   "ssm_cfg": {"d_conv": 4, "Mamba2": {"headdim": 4}}}
    assert cfg.model == {"d_model": 8, "n_layer": 1, "attn_cfg": {"num_heads": 2},
                         "ssm_cfg": {"d_conv": 4, "Mamba2": {"headdim": 4}}}, "the [model] table is not changed"

    assert cfg.train_for(ssm) == {**TINY["train"], "lr": 2e-3, "betas": (0.8, 0.9)}
    assert ssm.to_dict()["train.betas"] == [0.8, 0.9]
    assert cfg.task_for(ssm).vocab == 7 and cfg.task_for(ssm).copy_len == ssm.length
    # an override for another task is ignored
    other = GridPoint("induction_heads", "default", "Mamba2", 2, 64, 0, (("tasks.copy.vocab", 7),))
    plain = GridPoint("induction_heads", "default", "Mamba2", 2, 64, 0)
    assert cfg.task_for(other) == parse_sweep(TINY).task_for(plain)


def test_task_axes_only_apply_to_their_task():
    data = with_axes(tasks__copy__vocab=[4, 5])
    data["grid"]["task"] = ["copy", "induction_heads"]
    data["grid"]["length"] = [8]
    cfg = parse_sweep(data)
    copy_pts = [p for p in cfg.points() if p.task == "copy"]
    ind_pts = [p for p in cfg.points() if p.task == "induction_heads"]
    assert len(copy_pts) == 2 * len(ind_pts), "the other task's points are not duplicated"
    assert {dict(p.axes)["tasks.copy.vocab"] for p in ind_pts} == {None}
    assert "tasks.copy" not in ind_pts[0].run_id


@pytest.mark.parametrize(
    "axes,match",
    [
        ({"optim.lr": [1]}, r"optim\.lr: unknown axis"),
        ({"model.d_modl": [8]}, r"model\.d_modl: unknown MambaConfig field"),
        ({"model.d_model.x": [8]}, r"model\.d_model\.x: model\.d_model is not a table"),
        ({"model.vocab_size": [8]}, r"model\.vocab_size is set by the task"),
        ({"model.init": ["mimetic"]}, r"model\.init is set by grid\.init"),
        ({"model.init_cfg.tie_bc": [False]}, r"model\.init_cfg\.tie_bc is set by grid\.init"),
        ({"model.attn_layer_idx": [[0]]}, r"model\.attn_layer_idx is set by grid\.layer"),
        ({"model.ssm_cfg.d_state": [4]}, r"model\.ssm_cfg\.d_state is set by grid\.d_state"),
        ({"model.ssm_cfg.Mamba2.d_state": [4]}, r"model\.ssm_cfg\.Mamba2\.d_state is set by grid\.d_state"),
        ({"model.ssm_cfg.layer": ["Mamba1"]}, r"model\.ssm_cfg\.layer is set by grid\.layer"),
        ({"model.ssm_cfg.nope": [1]}, r"model\.ssm_cfg\.nope: Mamba2 has no argument nope"),
        ({"model.ssm_cfg.Mamba1.d_conv": [2]}, r"model\.ssm_cfg\.Mamba1\.d_conv applies to no point"),
        ({"model.ssm_cfg": [1]}, r"model\.ssm_cfg: expected"),
        ({"model.ssm_cfg": [{"d_conv": 2}]}, r"model\.ssm_cfg values must not be tables"),
        ({"model.attn_cfg.bogus": [1]}, r"model\.attn_cfg\.bogus: attention has no argument bogus"),
        ({"train.seed": [1]}, r"train\.seed is set by grid\.seed"),
        ({"train.out_dir": ["x"]}, r"train\.out_dir is set by the sweep runner"),
        ({"train.stepz": [1]}, r"train\.stepz: unknown TrainConfig field"),
        ({"train.lr": []}, r"grid\.train\.lr is empty"),
        ({"tasks.copy.copy_len": [3]}, r"tasks\.copy\.copy_len is the length knob"),
        ({"tasks.copy.vocabulary": [3]}, r"tasks\.copy\.vocabulary: unknown knob"),
        ({"tasks.mqar.num_kv_pairs": [3]}, r"tasks\.mqar\.num_kv_pairs: task 'mqar' is not in grid\.task"),
        ({"tasks.copy": [3]}, r"tasks\.copy: expected tasks\.<task>\.<knob>"),
        ({"model.d_model": [8], "model": {"d_model": [16]}}, r"model\.d_model given twice"),
        # values: every point is built at load time
        ({"train.lr": [1e-3, 0.0]}, r"lr=0\.0 must be > 0 \(point .*-train\.lr=0\.0\)"),
        ({"tasks.copy.vocab": [4, 1]}, r"vocab=1 too small.*tasks\.copy\.vocab=1"),
        ({"model.d_model": [8, 0]}, r"d_model must be a positive integer.*model\.d_model=0"),
        # (string sizes, which once could clash as run folders "x_y", are refused as sizes)
        ({"model.ssm_cfg.Mamba2.headdim": ["x y", "x_y"]}, r"headdim='x y' must be an integer >= 1"),
    ],
)
def test_axis_errors_are_one_line_and_name_the_path(axes, match):
    data = json.loads(json.dumps(TINY))
    data["grid"].update(axes)
    with pytest.raises(ValueError, match=match) as e:
        parse_sweep(data)
    assert "\n" not in str(e.value)


def test_axes_can_replace_required_model_keys():
    data = with_axes(model__d_model=[8, 16], model__attn_cfg__num_heads=[2])
    del data["model"]["d_model"], data["model"]["attn_cfg"]
    cfg = parse_sweep(data)
    assert {cfg.model_for(p)["d_model"] for p in cfg.points()} == {8, 16}


def test_end_to_end_axes_reach_the_runs(tmp_path):
    data = json.loads(json.dumps(TINY))
    data["grid"].update(init=["mimetic"], layer=["Mamba2", "attention"], d_state=[2])
    data["grid"].update(model={"d_model": [8, 16]}, train={"lr": [1e-3, 2e-3]})  # as [grid.model] etc.
    path = write_toml(tmp_path / "axes.toml", data)
    cfg = load_sweep(path)
    out = tmp_path / "out"
    res = run_sweep(path, out, progress=False, model_factory=tiny_factory)
    n = len(cfg.points())
    assert n == 2 * 2 * 2 * 4 and len(res.rows) == n  # layers x lengths x seeds x (d_model, lr)

    rows = list(csv.DictReader(res.csv_path.open()))
    assert {"model.d_model", "train.lr"} <= set(rows[0])
    assert {(r["model.d_model"], r["train.lr"]) for r in rows} == {
        ("8", "0.001"), ("8", "0.002"), ("16", "0.001"), ("16", "0.002")}
    params = {}
    for r in rows:
        params.setdefault(r["model.d_model"], set()).add(r["n_params"])
    assert params["8"].isdisjoint(params["16"]), "d_model reached the model"
    for p in cfg.points():
        ckpts = sorted((out / "runs" / p.run_id / "checkpoints").glob("step_*"))
        state = torch.load(ckpts[-1] / "state.pt", weights_only=True)
        assert state["config"]["lr"] == dict(p.axes)["train.lr"]

    summary = list(csv.DictReader(res.summary_path.open()))
    assert len(summary) == n // 2 and all(s["n_seeds"] == "2" for s in summary)
    assert {"model.d_model", "train.lr"} <= set(summary[0]) and "model.d_model_mean" not in summary[0]
    assert {p.name for p in res.plots} == {"copy_acc_vs_length.png", "copy_acc_vs_d_model.png", "copy_acc_vs_lr.png"}

    again = run_sweep(path, out, progress=False, plot=False, model_factory=tiny_factory)
    assert again.skipped == n and again.rows == res.rows


def test_summarize_groups_by_axis_columns():
    rows = [
        {"task": "copy", "init": "mimetic", "layer": "Mamba2", "d_state": 4, "length": 8, "seed": s,
         "model.d_model": w, "train.betas": [0.9, 0.95], "final_token_acc": a}
        for s, w, a in [(0, 8, 0.5), (1, 8, 0.7), (0, 16, 1.0)]
    ]
    by_width = {s["model.d_model"]: s for s in summarize(rows)}
    assert set(by_width) == {8, 16}
    assert by_width[8]["n_seeds"] == 2 and by_width[8]["final_token_acc_mean"] == pytest.approx(0.6)
    assert "model.d_model_mean" not in by_width[8]


def record_figures(monkeypatch) -> list:
    """The figures the sweep plots draw, in order (they are bare Figures, never shown)."""
    figs = []

    class Recorded(plots.Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            figs.append(self)

    monkeypatch.setattr(plots, "Figure", Recorded)
    return figs


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    """Importing mimetic.train.sweep and drawing its plots keep the user's backend (a
    notebook's, say): the plots never go through pyplot."""
    script = f"""
import matplotlib
matplotlib.use("svg")
from mimetic.train.sweep import plot_sweep
rows = [dict(task="copy", init="default", layer="Mamba1", d_state=4, length=n, seed=0, final_token_acc=0.5)
        for n in (8, 16)]
(path,) = plot_sweep(rows, {str(tmp_path)!r})
assert path.exists(), path
print(matplotlib.get_backend())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["svg"]


def test_plots_draw_one_series_per_axis_value(tmp_path, monkeypatch):
    figs = record_figures(monkeypatch)
    rows = [
        {"task": "copy", "init": init, "layer": layer, "d_state": None if layer == "attention" else 4,
         "length": n, "seed": 0, "model.d_model": w, "final_token_acc": 0.5}
        for init in ("default", "mimetic") for layer in ("Mamba2", "attention") for n in (8, 16) for w in (8, 16)
    ]
    length_path, width_path = plots.plot_sweep(rows, tmp_path)
    assert length_path.exists() and width_path.name == "copy_acc_vs_d_model.png" and width_path.exists()
    labels = figs[0].axes[0].get_legend_handles_labels()[1]
    assert sorted(labels) == sorted([
        "default, model.d_model=8", "default, model.d_model=16", "mimetic, model.d_model=8",
        "mimetic, model.d_model=16", "attention, model.d_model=8", "attention, model.d_model=16",
    ])
    # an axis zipped with the length (MQAR's num_kv_pairs) has no plot of its own
    zipped = [dict(r, **{"tasks.copy.pairs": r["length"] // 4}) for r in rows]
    assert [p.name for p in plots.plot_sweep(zipped, tmp_path)] == ["copy_acc_vs_length.png", "copy_acc_vs_d_model.png"]
    # vs the extra axis: a series per init and length, attention's too, over both widths
    ax = figs[1].axes[0]
    assert ax.get_xlabel() == "model.d_model"
    assert sorted(ax.get_legend_handles_labels()[1]) == sorted([
        f"{who}, copy_len={n}" for who in ("default", "mimetic", "attention") for n in (8, 16)])
    assert all(sorted(line.get_xdata()) == [8, 16] for line in ax.get_lines() if len(line.get_xdata()) > 1)
    # without extra axes the labels are the plain ones
    figs.clear()
    plots.plot_sweep([{k: v for k, v in r.items() if k != "model.d_model"} for r in rows if r["model.d_model"] == 8],
                     tmp_path)
    assert sorted(figs[0].axes[0].get_legend_handles_labels()[1]) == ["attention", "default", "mimetic"]


def test_the_legend_names_the_series_of_every_panel(tmp_path, monkeypatch):
    """A baseline panel with one init (LinearAttention) drawn last: the legend, in that
    panel, still names the Mamba panel's mimetic series."""
    figs = record_figures(monkeypatch)
    rows = [{"task": "copy", "init": init, "layer": layer, "d_state": 4, "length": n, "seed": 0,
             "final_token_acc": 0.5}
            for layer, inits in (("Mamba1", ("default", "mimetic")), ("LinearAttention", ("default",)))
            for init in inits for n in (8, 16)]
    plots.plot_sweep(rows, tmp_path)
    legend = figs[0].axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["default", "mimetic"]


def test_split_plot_has_a_panel_per_layer_and_d_state_with_every_seed(tmp_path, monkeypatch):
    figs = record_figures(monkeypatch)
    rows = [{"task": "copy", "init": init, "layer": layer, "d_state": d, "length": n, "seed": s,
             "final_token_acc": 0.1 * i + 0.01 * s + d / 1000}
            for i, init in enumerate(("default", "mimetic")) for layer in ("Mamba1", "Mamba2")
            for d in (4, 8) for n in (8, 16) for s in range(3)]
    length_path, _ = plots.plot_sweep(rows, tmp_path, split=True)
    assert length_path.name == "copy_acc_vs_length.png" and length_path.exists()
    axes = figs[0].axes
    assert [ax.get_title() for ax in axes] == ["Mamba1, d_state=4", "Mamba1, d_state=8",
                                               "Mamba2, d_state=4", "Mamba2, d_state=8"]
    assert axes[1].get_legend_handles_labels()[1] == ["default", "mimetic"]  # the panel names the d_state
    ax = axes[3]  # Mamba2, d_state 8: default, then mimetic
    means = [list(bar.lines[0].get_ydata()) for bar in ax.containers]
    assert means == [pytest.approx([0.018, 0.018]), pytest.approx([0.118, 0.118])]
    seeds = [c for c in ax.collections if type(c).__name__ == "PathCollection"]
    assert [len(c.get_offsets()) for c in seeds] == [6, 6]  # 2 lengths x 3 seeds, per init
    assert sorted(seeds[0].get_offsets()[:, 1]) == pytest.approx([0.008, 0.008, 0.018, 0.018, 0.028, 0.028])
    # the same d_state keeps its marker in every panel
    assert axes[1].containers[0].lines[0].get_marker() == axes[3].containers[0].lines[0].get_marker() != \
        axes[0].containers[0].lines[0].get_marker()


def test_ablation_plot_has_a_column_per_init_with_mean_and_seeds(tmp_path, monkeypatch):
    figs = record_figures(monkeypatch)
    inits = ("default", "mimetic", "decay_only")
    rows = [{"task": "copy", "init": init, "layer": layer, "d_state": 4, "length": 8, "seed": s,
             "final_token_acc": 0.1 * i + 0.01 * s}
            for i, init in enumerate(inits) for layer in ("Mamba1", "Mamba2") for s in range(3)]
    (path,) = plots.plot_sweep(rows, tmp_path)
    assert path.name == "copy_acc_by_init.png" and path.exists()
    ax = figs[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(inits)
    means = [bar.lines[0].get_ydata()[0] for bar in ax.containers]
    assert means == pytest.approx([0.01, 0.11, 0.21])
    seeds = [c for c in ax.collections if type(c).__name__ == "PathCollection"]
    assert sum(len(c.get_offsets()) for c in seeds) == 9  # every seed drawn


def test_generalization_plot_has_a_line_per_model_with_mean_over_seeds(tmp_path, monkeypatch):
    """[eval] lengths (``gen_*@n`` columns) give ``<task>_gen_vs_length.png``: a panel per metric,
    a line per (layer, init) at the seed means, the training length marked, log-2 x past 16x."""
    figs = record_figures(monkeypatch)
    rows = []
    for i, (layer, init) in enumerate([("Mamba1", "default"), ("Mamba1", "mimetic"), ("attention", "default")]):
        for s in range(2):
            row = {"task": "copy", "init": init, "layer": layer, "d_state": 4, "length": 64, "seed": s,
                   "final_token_acc": 0.5}
            for n in (64, 256, 2048):
                row[f"gen_token_acc@{n}"] = 0.1 * i + 0.1 * s
                row[f"gen_seq_acc@{n}"] = 0.05 * i
            rows.append(row)
    rows[0]["gen_seq_acc@2048"] = None  # a length a run did not evaluate is left out of its mean
    (path,) = plots.plot_sweep(rows, tmp_path)
    assert path.name == "copy_gen_vs_length.png" and path.exists()
    token_ax, seq_ax = figs[0].axes
    assert seq_ax.get_legend_handles_labels()[1] == ["Mamba1, default", "Mamba1, mimetic", "attention"]
    lines = [ln for ln in token_ax.get_lines() if len(ln.get_xdata()) > 2]
    assert [list(ln.get_xdata()) for ln in lines] == [[64, 256, 2048]] * 3
    assert [list(ln.get_ydata()) for ln in lines] == [pytest.approx([0.05] * 3), pytest.approx([0.15] * 3),
                                                      pytest.approx([0.25] * 3)]
    assert token_ax.get_xscale() == "log"
    assert [list(ln.get_xdata()) for ln in token_ax.get_lines() if len(ln.get_xdata()) == 2] == [[64, 64]]
    seq_default = [ln for ln in seq_ax.get_lines() if len(ln.get_xdata()) > 2][0]
    assert list(seq_default.get_xdata()) == [64, 256, 2048]  # seed 1 still has 2048


def test_linear_attention_points_run_with_default_init_and_keep_d_state(tmp_path):
    """The paper's baseline in a sweep: one point per (d_state, length, seed), init ignored;
    [model.ssm_cfg]'s shared keys reach only the layers that take them."""
    from mimetic.train.sweep import load_sweep

    path = tmp_path / "s.toml"
    path.write_text("""
[grid]
task = ["copy"]
init = ["default", "mimetic"]
layer = ["Mamba2", "LinearAttention"]
d_state = [4, 8]
length = [6]
seed = [0]
[model]
d_model = 16
n_layer = 1
[model.ssm_cfg]
d_conv = 3
headdim = 8
[train]
steps = 2
""")
    cfg = load_sweep(path)
    la = [p for p in cfg.points() if p.layer == "LinearAttention"]
    assert [(p.init, p.d_state) for p in la] == [("default", 4), ("default", 8)]
    from mimetic.train.sweep.config import mamba_config
    mc = mamba_config(cfg.model_for(la[0]), 10, la[0], *cfg.init_for(la[0]))
    assert mc.ssm_cfg == {"headdim": 8, "layer": "LinearAttention", "d_state": 4}
    m2 = [p for p in cfg.points() if p.layer == "Mamba2"][0]
    assert mamba_config(cfg.model_for(m2), 10, m2, *cfg.init_for(m2)).ssm_cfg["d_conv"] == 3
    path.write_text(path.read_text().replace("d_conv = 3", "d_convv = 3"))
    with pytest.raises(ValueError, match="d_convv is an argument of none"):
        load_sweep(path)


ZIP_SWEEP = """
[grid]
task = ["mqar"]
init = ["default"]
layer = ["Mamba2"]
d_state = [4]
seed = [0, 1]
[[grid.zip]]
length = [16, 32]
"tasks.mqar.num_kv_pairs" = [2, 4]
[tasks.mqar]
vocab_size = 64
[model]
d_model = 16
n_layer = 1
[model.ssm_cfg.Mamba2]
headdim = 8
[train]
steps = 2
"""


def test_zipped_keys_advance_together(tmp_path):
    from mimetic.train.sweep import load_sweep

    path = tmp_path / "z.toml"
    path.write_text(ZIP_SWEEP)
    cfg = load_sweep(path)
    got = [(p.length, dict(p.axes)["tasks.mqar.num_kv_pairs"], p.seed) for p in cfg.points()]
    assert got == [(16, 2, 0), (32, 4, 0), (16, 2, 1), (32, 4, 1)]
    assert [cfg.task_for(p).num_kv_pairs for p in cfg.points()[:2]] == [2, 4]


@pytest.mark.parametrize("edit, match", [
    (('"tasks.mqar.num_kv_pairs" = [2, 4]', '"tasks.mqar.num_kv_pairs" = [2, 4, 8]'), "all of one length"),
    (('"tasks.mqar.num_kv_pairs" = [2, 4]', ''), "at least two keys"),
    (('seed = [0, 1]', 'seed = [0, 1]\nlength = [8]'), "also a \\[grid\\] key"),
    (('"tasks.mqar.num_kv_pairs" = [2, 4]', '"tasks.mqar.num_kv_pairs" = [2, 400]'), "num_kv_pairs|kv"),
])
def test_bad_zips_are_one_line_errors(tmp_path, edit, match):
    from mimetic.train.sweep import load_sweep

    path = tmp_path / "z.toml"
    path.write_text(ZIP_SWEEP.replace(*edit))
    with pytest.raises(ValueError, match=match) as e:
        load_sweep(path)
    assert "\n" not in str(e.value)
