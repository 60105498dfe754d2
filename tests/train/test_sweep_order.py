"""Jobs start cheapest first (packed.by_cost), so a sweep cut off by a time limit leaves the
most finished points, spread over the grid."""
from pathlib import Path

from mimetic.train.sweep import load_sweep, packed
from mimetic.train.sweep.packed import by_cost, pack_points, point_cost

ROOT = Path(__file__).resolve().parents[2]
COPY_SEEDS = ROOT / "experiments" / "copy_seeds.toml"


def _point(cfg, **want):
    return next(p for p in cfg.points() if all(getattr(p, k) == v for k, v in want.items()))


def test_cost_follows_the_documented_estimate(tmp_path):
    cfg = load_sweep(COPY_SEEDS)  # steps 1500, batch 64, d_model 64, n_layer 2; copy: seq_len 2 * length + 1
    ssm = _point(cfg, layer="Mamba1", d_state=64, length=128)
    attn = _point(cfg, layer="attention", length=128)
    base = 1500 * 64 * 257 * 2 * 64
    assert point_cost(cfg, ssm, tmp_path / "a") == base * (64 + 64)
    assert point_cost(cfg, attn, tmp_path / "b") == base * (64 + 257)  # scores grow with the length


def test_finished_or_resumed_runs_cost_what_is_left(tmp_path, monkeypatch):
    cfg = load_sweep(COPY_SEEDS)
    point = _point(cfg, layer="Mamba2", d_state=16, length=64)
    full = point_cost(cfg, point, tmp_path / "run")
    monkeypatch.setattr(packed, "_resume_step", lambda run_dir: 500)  # a checkpoint at step 500 of 1500
    assert point_cost(cfg, point, tmp_path / "run") * 3 == full * 2
    monkeypatch.setattr(packed, "_resume_step", lambda run_dir: "done")
    assert point_cost(cfg, point, tmp_path / "run") == 0


def test_packs_start_cheapest_first_and_cover_every_layer_early(tmp_path):
    cfg = load_sweep(COPY_SEEDS)
    runs = tmp_path / "runs"
    packs = pack_points(cfg, cfg.points(), runs, capacity=20)
    per_member = [point_cost(cfg, pack[0], runs / pack[0].run_id) for pack in packs]
    assert per_member == sorted(per_member)
    lengths = [pack[0].length for pack in packs]
    ssm = [pack[0].length for pack in packs if pack[0].layer != "attention"]
    assert ssm == sorted(ssm)  # state-size layers: every shorter length first
    # all layers at the shortest length before anything longer (attention's longer lengths
    # come later than the SSMs' of the same length: its scores grow with the square)
    shortest = lengths.count(32)
    assert lengths[:shortest] == [32] * shortest
    assert {pack[0].layer for pack in packs[:shortest]} == {"Mamba1", "Mamba2", "LinearAttention", "attention"}
    assert sum(map(len, packs)) == len(cfg.points())


def test_a_split_group_gives_each_pack_every_init(tmp_path):
    cfg = load_sweep(COPY_SEEDS)
    group = [p for p in cfg.points() if (p.layer, p.d_state, p.length) == ("Mamba1", 16, 32)]
    assert len(group) == 20  # 2 inits x 10 seeds
    packs = pack_points(cfg, group, tmp_path / "runs", capacity=10)
    assert [sorted({p.init for p in pack}) for pack in packs] == [["default", "mimetic"]] * 2
    assert [sorted({p.seed for p in pack}) for pack in packs] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_a_finished_run_waiting_for_its_row_comes_first(tmp_path):
    cfg = load_sweep(COPY_SEEDS)
    points = cfg.points()
    dearest = max(points, key=lambda p: point_cost(cfg, p, tmp_path / "runs" / p.run_id))
    (tmp_path / "runs" / dearest.run_id).mkdir(parents=True)
    (tmp_path / "runs" / dearest.run_id / "result.json").write_text("{}")
    assert by_cost(cfg, points, tmp_path / "runs")[0] == dearest
