import dataclasses

import pytest
import torch

from mimetic.tasks import (
    TASKS,
    CopyTask,
    InductionHeadsTask,
    MQARTask,
    SelectiveCopyTask,
    derive_seed,
    make_task,
)
from mimetic.tasks.base import random_subset_rows, random_subset_rows_topk

from .oracles import oracle_predictions

SMALL = {
    "copy": dict(vocab=8, copy_len=12),
    "copy_jelassi": dict(vocab=6, min_len=2, max_len=8, context_len=48),
    "mqar": dict(num_kv_pairs=6, seq_len=48, vocab_size=64),
    "selective_copy": dict(seq_len=64, num_tokens=8, vocab_size=10),
    "induction_heads": dict(seq_len=32, vocab_size=12),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(params=sorted(SMALL))
def task(request):
    return make_task(request.param, **SMALL[request.param])


def test_registry_has_the_five_tasks():
    assert set(TASKS) == {"copy", "copy_jelassi", "mqar", "selective_copy", "induction_heads"}


def test_batch_shapes_dtypes_ranges(task):
    x, y, m = task.batch(16, gen(0))
    assert x.shape == y.shape == m.shape == (16, task.seq_len)
    assert x.dtype == y.dtype == torch.long and m.dtype == torch.bool
    for t in (x, y):
        assert int(t.min()) >= 0 and int(t.max()) < task.vocab_size
    assert bool(m.any(dim=1).all()), "every sequence has scored positions"


def test_unscored_targets_are_next_tokens(task):
    # Next-token convention wherever the task does not override the target.
    x, y, m = task.batch(16, gen(1))
    nxt = ~m[:, :-1]
    assert torch.equal(y[:, :-1][nxt], x[:, 1:][nxt])


def test_reproducible_and_seed_dependent(task):
    a = task.batch(8, gen(5))
    b = task.batch(8, gen(5))
    c = task.batch(8, gen(6))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])


def test_oracle_rule_matches_every_scored_target(task):
    # The documented format, executed: the rule recovers the target at every scored position.
    x, y, m = task.batch(32, gen(2))
    pred = oracle_predictions(task, x)
    assert torch.equal(pred[m], y[m])


def test_with_seq_len_keeps_format(task):
    longer = task.with_seq_len(task.seq_len * 2 + 1 if task.name == "copy" else task.seq_len * 2)
    assert type(longer) is type(task)
    assert longer.vocab_size == task.vocab_size
    x, y, m = longer.batch(4, gen(3))
    assert x.shape[1] == longer.seq_len
    assert torch.equal(oracle_predictions(longer, x)[m], y[m])


# ---------------------------------------------------------------------------------------- copy
def test_copy_format_exactly():
    t = CopyTask(vocab=5, copy_len=7)
    assert (t.vocab_size, t.seq_len, t.bos, t.sep) == (7, 15, 5, 6)
    x, y, m = t.batch(10, gen(0))
    n = 7
    assert (x[:, 0] == t.bos).all()
    assert (x[:, n + 1] == t.sep).all(), "separator right after the string"
    assert ((x == t.sep).sum(1) == 1).all() and ((x == t.bos).sum(1) == 1).all()
    s = x[:, 1 : n + 1]
    assert int(s.max()) < 5
    assert torch.equal(x[:, n + 2 :], s[:, : n - 1]), "second half repeats the string"
    assert torch.equal(y[:, n + 1 :], s), "scored targets are the whole string"
    expected_mask = torch.zeros(15, dtype=torch.bool)
    expected_mask[n + 1 :] = True
    assert (m == expected_mask).all() and int(m.sum(1)[0]) == n


def test_copy_with_seq_len_and_length():
    t = CopyTask(copy_len=4)
    assert t.with_seq_len(21).copy_len == 10
    assert t.with_length(10) == t.with_seq_len(21)
    with pytest.raises(ValueError, match="odd"):
        t.with_seq_len(20)


# ---------------------------------------------------------------------------------------- mqar
def test_mqar_format_exactly():
    P, L, V = 6, 48, 64
    t = MQARTask(num_kv_pairs=P, seq_len=L, vocab_size=V)
    assert t.num_queries == P
    x, y, m = t.batch(64, gen(0))
    keys, values = x[:, 0 : 2 * P : 2], x[:, 1 : 2 * P : 2]
    assert bool(((keys >= 1) & (keys < V // 2)).all()), "keys from the lower half, never 0"
    assert bool(((values >= V // 2) & (values < V)).all()), "values from the upper half"
    for b in range(x.shape[0]):
        assert len(set(keys[b].tolist())) == P and len(set(values[b].tolist())) == P
        qpos = m[b].nonzero().flatten().tolist()
        assert len(qpos) == P
        assert all(p >= 2 * P and (p - 2 * P) % 2 == 0 for p in qpos), "queries at slot starts"
        table = dict(zip(keys[b].tolist(), values[b].tolist()))
        queried = [int(x[b, p]) for p in qpos]
        assert sorted(queried) == sorted(table), "each key queried once"
        for p in qpos:
            k, v = int(x[b, p]), int(y[b, p])
            assert table[k] == v, "answer is the value of that key"
            # the answer appears earlier, right after the key
            first = x[b, :p].tolist().index(k)
            assert first < 2 * P and int(x[b, first + 1]) == v


def test_mqar_num_queries_and_zero_filler():
    t = MQARTask(num_kv_pairs=8, seq_len=40, vocab_size=100, num_queries=3, random_non_queries=False)
    x, y, m = t.batch(32, gen(1))
    assert (m.sum(1) == 3).all()
    region = x[:, 16:]
    assert ((region == 0) | m[:, 16:]).all(), "non-query positions of the region are filler 0"


def test_mqar_power_law_prefers_early_slots():
    t = MQARTask(num_kv_pairs=2, seq_len=204, vocab_size=64, num_queries=1)
    _, _, m = t.batch(2000, gen(2))
    slot = (m.float().argmax(1) - 4) // 2
    assert float((slot < 10).float().mean()) > 0.4  # 10 of 100 slots; uniform would give 0.1
    u = dataclasses.replace(t, power_a=1.0)
    _, _, m = u.batch(2000, gen(2))
    slot = (m.float().argmax(1) - 4) // 2
    assert 0.05 < float((slot < 10).float().mean()) < 0.16


# ------------------------------------------------------------------------------ selective copy
def test_selective_copy_format_exactly():
    t = SelectiveCopyTask(seq_len=64, num_tokens=8, vocab_size=10)
    x, y, m = t.batch(32, gen(0))
    R = 56
    assert (x[:, R:] == t.marker).all() and (x[:, :R] != t.marker).all()
    data_mask = x[:, :R] != t.blank
    assert (data_mask.sum(1) == 8).all(), "exactly num_tokens data tokens in the region"
    assert (m[:, R:]).all() and not m[:, :R].any()
    for b in range(32):
        assert y[b, R:].tolist() == x[b, :R][data_mask[b]].tolist(), "data tokens in order"


# ----------------------------------------------------------------------------- induction heads
def test_induction_heads_format_exactly():
    t = InductionHeadsTask(seq_len=20, vocab_size=6)
    x, y, m = t.batch(200, gen(0))
    assert ((x == t.special).sum(1) == 2).all(), "special token exactly twice"
    assert (x[:, -1] == t.special).all()
    first = (x == t.special).float().argmax(1)
    assert int(first.max()) == 16, "trigger uniform over 0 .. L-4 (safari: the first n-2 of n+1)"
    assert torch.equal(y[:, -1], x.gather(1, (first + 1)[:, None]).squeeze(1))
    assert (m.sum(1) == 1).all() and m[:, -1].all()
    assert len(set(first.tolist())) > 10, "the first special token's position varies"


# --------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "name,knobs,match",
    [
        ("copy", dict(vocab=1), "vocab"),
        ("copy", dict(copy_len=0), "copy_len"),
        ("copy", dict(copy_len=2.5), "copy_len"),
        ("mqar", dict(num_kv_pairs=8, seq_len=20), "seq_len=20 too short"),
        ("mqar", dict(num_kv_pairs=8, vocab_size=16), "vocab_size=16 too small"),
        ("mqar", dict(num_kv_pairs=4, num_queries=5), "num_queries"),
        ("selective_copy", dict(seq_len=10, num_tokens=8), "seq_len=10 too short"),
        ("selective_copy", dict(vocab_size=2), "vocab_size=2 too small"),
        ("induction_heads", dict(seq_len=3), "seq_len=3 too short"),
        ("induction_heads", dict(vocab_size=16, data_vocab=16), "data_vocab=16"),
        ("induction_heads", dict(data_vocab=1), "data_vocab=1"),
        ("copy_jelassi", dict(min_len=0), "min_len=0"),
        ("copy_jelassi", dict(min_len=6, max_len=5), "max_len=5 must be >= min_len=6"),
        ("copy_jelassi", dict(max_len=60, context_len=120), "context_len=120 too short"),
        ("copy_jelassi", dict(vocab=1), "vocab=1 too small"),
        ("copy_jelassi", dict(context_len=100.0), "context_len must be an int"),
        ("copy_jelassi", dict(packed=1), "packed must be true or false"),
        ("induction_heads", dict(vocab_size=2), "vocab_size"),
        ("nope", {}, "valid tasks: copy, copy_jelassi, induction_heads, mqar, selective_copy"),
        ("copy", dict(length=3), "unknown knob"),
    ],
)
def test_validation_errors(name, knobs, match):
    with pytest.raises(ValueError, match=match):
        make_task(name, **knobs)


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        CopyTask().batch(0, gen(0))


def test_derive_seed_is_stable_and_separates_streams():
    assert derive_seed("train", 0, 1) == derive_seed("train", 0, 1)
    seeds = {derive_seed(tag, s, i) for tag in ("train", "eval") for s in range(3) for i in range(50)}
    assert len(seeds) == 300
    assert 0 <= derive_seed("x") < 2**63


@pytest.mark.parametrize("draw", [random_subset_rows, random_subset_rows_topk])
def test_random_subsets_are_uniform_and_in_random_order(draw):
    """Both subset draws: k distinct values of range(population) a row, every value equally
    likely in every slot (the law MQAR's keys and values need; counts within 5 sigma)."""
    B, population, k = 20000, 10, 3
    rows = draw(B, population, k, torch.Generator().manual_seed(0))
    assert rows.shape == (B, k) and rows.min() >= 0 and rows.max() < population
    assert (rows.sort(dim=1).values.diff(dim=1) > 0).all()  # distinct
    expected = B / population
    sigma = (expected * (1 - 1 / population)) ** 0.5
    for slot in range(k):
        counts = torch.bincount(rows[:, slot], minlength=population).float()
        assert (counts - expected).abs().max() < 5 * sigma, (slot, counts)
