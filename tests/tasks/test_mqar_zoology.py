"""MQAR against the format rules of Zoology's ``multiquery_ar`` (the digest's list), one test a
rule, with exact probabilities as the oracle where the rule is a distribution."""
import itertools

import pytest
import torch

from mimetic.tasks import MQARTask


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def power_law(space: int, power_a: float) -> torch.Tensor:
    """Zoology's gap distribution: p_g proportional to power_a * g ** (power_a - 1), g = 1 .. space."""
    p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    return p / p.sum()


def query_slots(task: MQARTask, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(B, P): the slot g of the query of pair j (found by its key), for every pair."""
    P = task.num_kv_pairs
    B = x.shape[0]
    keys = x[:, 0 : 2 * P : 2]
    out = torch.full((B, P), -1)
    pos = torch.arange(x.shape[1])
    for j in range(P):
        hit = m & (x == keys[:, j : j + 1])
        assert (hit.sum(1) == 1).all(), "every key is queried exactly once"
        out[:, j] = ((hit.long() * pos).sum(1) - 2 * P) // 2
    return out


def test_rule_keys_lower_half_values_upper_half_distinct_and_uniform():
    V, P = 20, 3
    t = MQARTask(num_kv_pairs=P, seq_len=4 * P, vocab_size=V)
    x, _, _ = t.batch(20000, gen(0))
    keys, values = x[:, 0 : 2 * P : 2], x[:, 1 : 2 * P : 2]
    assert int(keys.min()) == 1 and int(keys.max()) == V // 2 - 1, "keys: all of [1, V/2), never 0"
    assert int(values.min()) == V // 2 and int(values.max()) == V - 1, "values: all of [V/2, V)"
    assert (keys.sort(1).values.diff(dim=1) > 0).all() and (values.sort(1).values.diff(dim=1) > 0).all()
    # Without replacement from the half, each key value is equally likely in each pair slot.
    freq = torch.bincount(keys[:, 0], minlength=V // 2)[1:].float() / 20000
    assert float((freq - 1 / 9).abs().max()) < 0.012


def test_rule_all_pairs_first_then_queries_at_slot_starts():
    P, L = 4, 40
    t = MQARTask(num_kv_pairs=P, seq_len=L, vocab_size=64, random_non_queries=False)
    x, y, m = t.batch(500, gen(1))
    assert not m[:, : 2 * P].any(), "nothing scored among the pairs"
    qpos = m.nonzero()[:, 1]
    assert bool(((qpos - 2 * P) % 2 == 0).all()), "queries at 2P + 2g"
    # With zero fillers the query region is exactly: the keys at the query positions, else 0.
    region, mreg = x[:, 2 * P :], m[:, 2 * P :]
    assert (region[~mreg] == 0).all() and (region[mreg] >= 1).all() and (region[mreg] < 32).all()


def test_rule_label_is_the_value_paired_with_the_query_key():
    P = 5
    t = MQARTask(num_kv_pairs=P, seq_len=64, vocab_size=100)
    x, y, m = t.batch(200, gen(2))
    for b in range(200):
        table = dict(zip(x[b, 0 : 2 * P : 2].tolist(), x[b, 1 : 2 * P : 2].tolist()))
        for p in m[b].nonzero().flatten().tolist():
            assert int(y[b, p]) == table[int(x[b, p])]


def test_rule_query_of_pair_j_takes_the_j_th_power_law_draw():
    # Zoology writes keys[j] at gaps[j], gaps drawn one after another without replacement from
    # the power law. Exact joint law of (slot of pair 0, slot of pair 1) for S = 4 slots:
    # P(a, b) = p_a * p_b / (1 - p_a). A uniformly random query order would symmetrize it.
    P, S, N = 2, 4, 40000
    t = MQARTask(num_kv_pairs=P, seq_len=2 * P + 2 * S, vocab_size=64)
    x, _, m = t.batch(N, gen(3))
    slots = query_slots(t, x, m)
    p = power_law(S, 0.01)
    for a, b in itertools.permutations(range(S), 2):
        exact = float(p[a] * p[b] / (1 - p[a]))
        got = float(((slots[:, 0] == a) & (slots[:, 1] == b)).double().mean())
        sd = (exact * (1 - exact) / N) ** 0.5
        assert abs(got - exact) < 5 * sd, (a, b, got, exact)
    # The asymmetry that distinguishes the rule: pair 0 is queried first more often than not
    # (a random query order would give exactly 1/2).
    exact = sum(float(p[a] * p[b] / (1 - p[a])) for a in range(S) for b in range(S) if a < b)
    got = float((slots[:, 0] < slots[:, 1]).double().mean())
    assert exact > 0.55 and abs(got - exact) < 5 * (exact * (1 - exact) / N) ** 0.5


@pytest.mark.parametrize("power_a", [0.01, 0.5, 1.0])
def test_rule_first_query_gap_follows_the_power_law(power_a):
    # The first draw's marginal is the power law itself: p_g = g^(a-1) / sum.
    P, S, N = 2, 30, 30000
    t = MQARTask(num_kv_pairs=P, seq_len=2 * P + 2 * S, vocab_size=64, power_a=power_a)
    x, _, m = t.batch(N, gen(4))
    got = torch.bincount(query_slots(t, x, m)[:, 0], minlength=S).double() / N
    p = power_law(S, power_a)
    sd = (p * (1 - p) / N).sqrt()
    assert bool(((got - p).abs() < 5 * sd + 1e-4).all())


def test_rule_fillers_are_uniform_over_the_whole_vocabulary():
    # random_non_queries: every non-query position of the query region is uniform on [0, V),
    # keys and values included (Zoology replaces the zeros with randint(V)).
    V, P, S = 16, 2, 20
    t = MQARTask(num_kv_pairs=P, seq_len=2 * P + 2 * S + 1, vocab_size=V)  # odd: a trailing filler
    x, _, m = t.batch(5000, gen(5))
    fill = x[:, 2 * P :][~m[:, 2 * P :]]
    freq = torch.bincount(fill, minlength=V).double() / fill.numel()
    assert float((freq - 1 / V).abs().max()) < 0.004
    assert float((x[:, -1].bincount(minlength=V).double() / 5000 - 1 / V).abs().max()) < 0.03


def test_rule_queries_every_key_by_default_and_answer_never_repeated_after_the_query():
    t = MQARTask(num_kv_pairs=6, seq_len=64, vocab_size=8192)
    x, y, m = t.batch(300, gen(6))
    assert t.num_queries == 6 and (m.sum(1) == 6).all()
    # The value appears right after its key among the pairs; after a query, a position may hold
    # it only by filler chance (1/V per position), never by construction.
    after = torch.zeros_like(m)
    after[:, 1:] = m[:, :-1]
    assert float((x[after] == y[m]).double().mean()) < 0.01


@pytest.mark.parametrize("seq_len,pairs", [(64, 4), (128, 8), (256, 16), (512, 64)])
def test_zoology_figure_2_settings(seq_len, pairs):
    t = MQARTask(num_kv_pairs=pairs, seq_len=seq_len, vocab_size=8192)
    x, y, m = t.batch(4, gen(7))
    assert x.shape == (4, seq_len) and (m.sum(1) == pairs).all()
    assert int(x.max()) < 8192 and int(y[m].min()) >= 4096


def test_fewer_queries_keep_pair_order_among_the_queried_pairs():
    # num_queries < num_kv_pairs (not in Zoology): Q pairs chosen uniformly, the j-th of them
    # (in pair order) takes draw j. Each pair is queried with probability Q/P.
    P, Q, S, N = 4, 2, 6, 20000
    t = MQARTask(num_kv_pairs=P, seq_len=2 * P + 2 * S, vocab_size=64, num_queries=Q)
    x, _, m = t.batch(N, gen(8))
    keys = x[:, 0 : 2 * P : 2]
    queried = torch.stack([(m & (x == keys[:, j : j + 1])).any(1) for j in range(P)], 1)
    assert (queried.sum(1) == Q).all()
    assert float((queried.double().mean(0) - Q / P).abs().max()) < 0.02
    # Among the two queried pairs, the earlier one takes the first draw: its slot is smaller
    # with the probability that draw 1 < draw 2 under the power law (exact, S = 6).
    p = power_law(S, 0.01)
    exact = sum(float(p[a] * p[b] / (1 - p[a])) for a in range(S) for b in range(S) if a < b)
    pos = torch.arange(x.shape[1])
    first_slot = torch.empty(N, dtype=torch.long)
    second_slot = torch.empty(N, dtype=torch.long)
    for i in range(N):
        js = queried[i].nonzero().flatten().tolist()
        slot = [int(pos[m[i] & (x[i] == keys[i, j])]) for j in js]
        first_slot[i], second_slot[i] = slot
    got = float((first_slot < second_slot).double().mean())
    assert abs(got - exact) < 5 * (exact * (1 - exact) / N) ** 0.5
