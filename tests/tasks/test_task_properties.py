"""Property tests: the format invariants hold for any valid knobs, not only the ones we chose."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mimetic.tasks import CopyTask, InductionHeadsTask, JelassiCopyTask, MQARTask, SelectiveCopyTask

from .oracles import oracle_predictions


def check(task, seed):
    x, y, m = task.batch(4, torch.Generator().manual_seed(seed))
    assert x.shape == (4, task.seq_len)
    assert 0 <= int(x.min()) and int(x.max()) < task.vocab_size
    assert torch.equal(oracle_predictions(task, x)[m], y[m])
    # The static bound the ensemble trainer sizes its LM-head slots by (scored_slots).
    assert int(m.sum(1).max()) <= task.max_scored
    return x, y, m


@settings(max_examples=40, deadline=None)
@given(
    P=st.integers(1, 12), extra=st.integers(0, 20), vocab_extra=st.integers(0, 40),
    q_frac=st.floats(0.01, 1.0), power_a=st.sampled_from([0.01, 0.5, 1.0]),
    random_fill=st.booleans(), seed=st.integers(0, 2**31),
)
def test_mqar_any_valid_knobs(P, extra, vocab_extra, q_frac, power_a, random_fill, seed):
    Q = max(1, int(P * q_frac))
    task = MQARTask(num_kv_pairs=P, seq_len=2 * P + 2 * Q + extra, vocab_size=2 * (P + 1) + vocab_extra,
                    num_queries=Q, power_a=power_a, random_non_queries=random_fill)
    x, y, m = check(task, seed)
    assert (m.sum(1) == Q).all() and task.max_scored == Q
    keys, values = x[:, 0:2 * P:2], x[:, 1:2 * P:2]
    half = task.vocab_size // 2
    assert ((keys >= 1) & (keys < half)).all() and (values >= half).all()


@settings(max_examples=30, deadline=None)
@given(M=st.integers(1, 10), extra=st.integers(0, 30), V=st.integers(3, 20), seed=st.integers(0, 2**31))
def test_selective_copy_any_valid_knobs(M, extra, V, seed):
    _, _, m = check(task := SelectiveCopyTask(seq_len=2 * M + extra, num_tokens=M, vocab_size=V), seed)
    assert (m.sum(1) == M).all() and task.max_scored == M


@settings(max_examples=30, deadline=None)
@given(L=st.integers(4, 40), V=st.integers(3, 20), seed=st.integers(0, 2**31))
def test_induction_heads_any_valid_knobs(L, V, seed):
    x, _, m = check(task := InductionHeadsTask(seq_len=L, vocab_size=V), seed)
    assert ((x == V - 1).sum(1) == 2).all()
    assert (m.sum(1) == 1).all() and task.max_scored == 1


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 30), V=st.integers(2, 30), seed=st.integers(0, 2**31))
def test_copy_any_valid_knobs(n, V, seed):
    x, y, m = check(task := CopyTask(vocab=V, copy_len=n), seed)
    assert (m.sum(1) == n).all() and task.max_scored == n


@settings(max_examples=30, deadline=None)
@given(lo=st.integers(1, 8), span=st.integers(0, 8), extra=st.integers(0, 40), V=st.integers(2, 12),
       packed=st.booleans(), score_end=st.booleans(), seed=st.integers(0, 2**31))
def test_copy_jelassi_any_valid_knobs(lo, span, extra, V, packed, score_end, seed):
    hi = lo + span
    task = JelassiCopyTask(vocab=V, min_len=lo, max_len=hi, context_len=2 * hi + 3 + extra,
                           packed=packed, score_end=score_end)
    x, y, m = check(task, seed)
    # Each complete example scores n (+1 with the end token) positions; the first '|' of
    # every row belongs to a complete example (the longest example fits).
    assert (m.sum(1) >= lo).all()
    if not packed:
        n = (x == task.sep).float().argmax(1) - 1
        assert torch.equal(m.sum(1), n + int(score_end))
