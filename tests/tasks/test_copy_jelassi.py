"""copy_jelassi: Jelassi et al.'s packed ``$ s | s .`` format and its per-length evaluation."""
import pytest
import torch

from mimetic.tasks import JelassiCopyTask, copy_accuracy_by_length, evaluate, make_task
from mimetic.tasks.base import make_generator

from .oracles import OracleModel, RandomModel


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def parse_row(task: JelassiCopyTask, row: list[int]):
    """Walk a context from position 0 by the documented grammar; returns the complete
    examples as (start, string) and the start of the cut-off tail (or of the padding)."""
    examples, t, L = [], 0, len(row)
    while t < L and row[t] == task.bos:
        tail = row[t:]
        if task.sep not in tail:  # cut inside the string: `$` then letters to the end
            assert all(0 <= c < task.vocab for c in tail[1:])
            return examples, t
        sep = row.index(task.sep, t)
        s = row[t + 1 : sep]
        n = len(s)
        if t + 2 * n + 3 > L:  # cut later: what is visible is a prefix of `$ s | s .`
            assert tail == [task.bos, *s, task.sep, *s, task.end][: len(tail)], "cut tail"
            return examples, t
        assert all(0 <= c < task.vocab for c in s), "letters only in the string"
        assert row[sep + 1 : sep + 1 + n] == s and row[sep + 1 + n] == task.end, "s | s ."
        examples.append((t, s))
        t += 2 * n + 3
    return examples, t


def test_token_ids():
    t = JelassiCopyTask(vocab=26)
    assert (t.bos, t.sep, t.end, t.pad, t.vocab_size) == (26, 27, 28, 29, 30)
    assert (t.min_len, t.max_len, t.seq_len, t.length_knob) == (5, 50, 220, "max_len")


def test_packed_contexts_follow_the_grammar_and_mask_exactly_copy_and_end():
    task = JelassiCopyTask(vocab=5, min_len=3, max_len=9, context_len=64)
    x, y, m = task.batch(64, gen(0))
    assert x.shape == y.shape == m.shape == (64, 64)
    assert torch.equal(y[:, :-1], x[:, 1:]) and (y[:, -1] == task.pad).all()
    counts = []
    for b in range(64):
        row = x[b].tolist()
        examples, tail = parse_row(task, row)
        assert examples, "the longest example always fits"
        assert task.pad not in row, "packed contexts are filled by a cut example, not padding"
        assert tail == 64 or row[tail] == task.bos
        expected = torch.zeros(64, dtype=torch.bool)
        for start, s in examples:
            n = len(s)
            assert task.min_len <= n <= task.max_len
            expected[start + n + 1 : start + 2 * n + 2] = True  # from '|' to the last copied letter
            assert y[b, start + n + 1 : start + 2 * n + 1].tolist() == s
            assert int(y[b, start + 2 * n + 1]) == task.end
        assert torch.equal(m[b], expected), "scored: copy and end token of complete examples only"
        counts.append(len(examples))
    assert sum(counts) / len(counts) > 2, "several examples per context"


def test_string_lengths_are_uniform_in_min_max():
    # Length of the first example of each row: the first draw, so exactly uniform.
    task = JelassiCopyTask(vocab=4, min_len=5, max_len=14, context_len=80)
    x, _, _ = task.batch(6000, gen(1))
    n = (x == task.sep).float().argmax(1) - 1
    freq = torch.bincount(n, minlength=15)[5:].float() / 6000
    assert int(n.min()) == 5 and int(n.max()) == 14
    # 10 lengths at p = 0.1 each; 6000 draws: sd of a frequency is about 0.004.
    assert float((freq - 0.1).abs().max()) < 0.02


def test_letters_are_uniform():
    task = JelassiCopyTask(vocab=6, min_len=4, max_len=8, context_len=60)
    x, _, m = task.batch(2000, gen(2))
    letters = x[x < task.vocab]
    freq = torch.bincount(letters, minlength=6).float() / letters.numel()
    assert float((freq - 1 / 6).abs().max()) < 0.01


def test_score_end_false_drops_only_the_end_token():
    a = JelassiCopyTask(vocab=5, min_len=2, max_len=6, context_len=40)
    b = JelassiCopyTask(vocab=5, min_len=2, max_len=6, context_len=40, score_end=False)
    xa, ya, ma = a.batch(32, gen(3))
    xb, yb, mb = b.batch(32, gen(3))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    dropped = ma & ~mb
    assert not (mb & ~ma).any()
    assert (ya[dropped] == a.end).all() and not (ya[mb] == a.end).any()


def test_length_eval_task_is_jelassis_evaluation_format():
    train = JelassiCopyTask(vocab=26)  # [5, 50], context 220
    for n, context in ((7, 220), (100, 220), (120, 243)):
        ev = train.length_eval_task(n)
        assert (ev.min_len, ev.max_len, ev.packed, ev.score_end, ev.seq_len) == (n, n, False, False, context)
        x, y, m = ev.batch(8, gen(n))
        assert (x[:, 0] == ev.bos).all() and (x[:, n + 1] == ev.sep).all()
        assert torch.equal(x[:, n + 2 : 2 * n + 2], x[:, 1 : n + 1])
        assert (x[:, 2 * n + 2] == ev.end).all() and (x[:, 2 * n + 3 :] == ev.pad).all()
        assert (m.sum(1) == n).all() and m[:, n + 1 : 2 * n + 1].all()
        assert torch.equal(y[:, n + 1 : 2 * n + 1], x[:, 1 : n + 1])


def test_length_knob_and_context_in_sweeps():
    t = JelassiCopyTask()
    assert t.with_length(100).max_len == 100 and t.with_length(100).seq_len == 406, "two longest fit"
    assert t.with_length(20).seq_len == 220
    assert JelassiCopyTask(context_len=300).with_length(100).seq_len == 300, "an explicit context stays"
    assert t.with_seq_len(500).seq_len == 500 and t.with_seq_len(500).max_len == 50
    with pytest.raises(ValueError, match="too short for max_len=200"):
        JelassiCopyTask(context_len=220).with_length(200)
    with pytest.raises(ValueError, match="evaluation length"):
        t.length_eval_task(0)


def test_batches_are_a_pure_function_of_the_generator_with_fixed_shape():
    task = make_task("copy_jelassi", vocab=8, min_len=3, max_len=12)
    a = task.batch(16, make_generator("train", 0, 5))
    b = task.batch(16, make_generator("train", 0, 5))
    c = task.batch(16, make_generator("train", 0, 6))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])
    assert all(t.shape == (16, task.seq_len) for t in a + c)


# ------------------------------------------------------------------------------- evaluation
def test_copy_accuracy_by_length_oracle_and_random():
    task = JelassiCopyTask(vocab=6, min_len=2, max_len=10, context_len=40)
    out = copy_accuracy_by_length(OracleModel(task), task, [2, 10, 20], num_batches=2, batch_size=8)
    assert list(out) == [2, 10, 20] and all(v == (1.0, 1.0) for v in out.values())
    rnd = copy_accuracy_by_length(RandomModel(task.vocab_size), task, [10], num_batches=2, batch_size=16)
    exact, char = rnd[10]
    assert exact == 0.0 and char < 0.35


class WrongAfter(torch.nn.Module):
    """The oracle, but wrong on every copied letter at offset >= k (a model that copies the
    first k letters of any string and then fails)."""

    def __init__(self, task, k):
        super().__init__()
        self.task, self.k, self.oracle = task, k, OracleModel(task)

    def forward(self, x):
        logits = self.oracle(x)
        for b in range(x.shape[0]):
            row = x[b].tolist()
            sep = row.index(self.task.sep)
            n = sep - 1
            for t in range(sep + self.k, sep + n):
                logits[b, t] = logits[b, t].roll(1, dims=-1)
        return logits


@pytest.mark.parametrize("k", [3, 6])
def test_exact_and_char_accuracy_per_length_against_hand_counts(k):
    # Strings of length n <= k are copied perfectly; longer ones get k of n letters right.
    task = JelassiCopyTask(vocab=5, min_len=2, max_len=8, context_len=40)
    out = copy_accuracy_by_length(WrongAfter(task, k), task, [2, k, k + 1, 12], num_batches=1, batch_size=4)
    assert out[2] == (1.0, 1.0) and out[k] == (1.0, 1.0)
    assert out[k + 1] == (0.0, pytest.approx(k / (k + 1)))
    assert out[12] == (0.0, pytest.approx(k / 12))


def test_evaluate_on_the_eval_task_gives_the_same_numbers():
    task = JelassiCopyTask(vocab=5, min_len=2, max_len=8, context_len=40)
    model = WrongAfter(task, 4)
    m = evaluate(model, task.length_eval_task(6), num_batches=2, batch_size=4, seed=3)
    assert copy_accuracy_by_length(model, task, [6], num_batches=2, batch_size=4, seed=3)[6] == (
        m["seq_acc"], m["token_acc"])


def test_copy_accuracy_by_length_works_for_the_plain_copy_task():
    task = make_task("copy", vocab=6, copy_len=8)
    out = copy_accuracy_by_length(OracleModel(task), task, [4, 16], num_batches=1, batch_size=4)
    assert out == {4: (1.0, 1.0), 16: (1.0, 1.0)}


def test_copy_accuracy_by_length_rejects_other_tasks():
    with pytest.raises(ValueError, match="needs a copy or copy_jelassi task, got 'mqar'"):
        copy_accuracy_by_length(RandomModel(8), make_task("mqar", num_kv_pairs=2, seq_len=16, vocab_size=8), [4])

