"""The Mamba paper's synthetic setups (Table 1 selective copying, Table 11 induction heads)
expressed with our tasks, checked against the generators they follow (S4's copying data with
``variable=True``; H3/safari's induction head), re-implemented here from their stated rules."""
import pytest
import torch

from mimetic.tasks import InductionHeadsTask, SelectiveCopyTask, make_task


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ Table 1: selective copying
def s4_rebuild(tokens: torch.Tensor, inds: torch.Tensor, l_noise: int, n_tokens: int) -> torch.Tensor:
    """S4's selective copying input for given data tokens and (sorted) positions: zeros of
    length l_noise + M with the tokens scattered at inds, then M markers n_tokens - 1."""
    B, M = tokens.shape
    region = torch.zeros(B, l_noise + M, dtype=torch.long).scatter(1, inds, tokens)
    return torch.cat([region, torch.full((B, M), n_tokens - 1)], dim=1)


def test_table1_defaults():
    t = SelectiveCopyTask()
    assert (t.seq_len, t.num_tokens, t.vocab_size) == (4096, 16, 16)
    assert (t.blank, t.marker) == (0, 15)


@pytest.mark.parametrize("seq_len", [4096, 4128])  # input length 4096, or S4's l_noise = 4096
def test_table1_batches_are_s4_selective_copying(seq_len):
    t = SelectiveCopyTask(seq_len=seq_len)
    M, l_noise = 16, seq_len - 32
    x, y, m = t.batch(64, gen(0))
    R = l_noise + M
    data_mask = x[:, :R] != 0
    assert (data_mask.sum(1) == M).all()
    inds = data_mask.nonzero()[:, 1].view(64, M)  # sorted per row
    tokens = x[:, :R][data_mask].view(64, M)
    assert torch.equal(x, s4_rebuild(tokens, inds, l_noise, 16))
    assert torch.equal(y[:, R:], tokens) and m[:, R:].all() and not m[:, :R].any()


def test_table1_data_values_and_positions_are_uniform():
    t = SelectiveCopyTask()
    x, y, m = t.batch(256, gen(1))
    d = y[m]
    freq = torch.bincount(d, minlength=16).double() / d.numel()
    assert freq[0] == 0 and freq[15] == 0, "data tokens are 1 .. 14 (blank 0 and marker 15 excluded)"
    assert float((freq[1:15] - 1 / 14).abs().max()) < 0.012
    # positions: a uniform 16-subset of the 4080-long region; the mean of the i-th smallest of
    # M uniform positions out of R is about (i + 1) (R + 1) / (M + 1) - 1.
    R = 4080
    pos = (x[:, :R] != 0).nonzero()[:, 1].view(256, 16).double()
    expected = torch.arange(1, 17, dtype=torch.float64) * (R + 1) / 17 - 1
    assert float(((pos.mean(0) - expected).abs() / R).max()) < 0.02


# ------------------------------------------------------------------ Table 11: induction heads
def test_table11_defaults():
    t = InductionHeadsTask()
    assert (t.seq_len, t.vocab_size, t.data_vocab, t.special) == (256, 16, 15, 15)
    safari = InductionHeadsTask(seq_len=257, data_vocab=14)
    assert safari.data_vocab == 14 and safari.vocab_size == 16


def test_table11_safari_vocabulary_and_trigger_positions():
    # safari: input_seq_len = n ordinary tokens (V - 2 of them: 2 special ids), trigger at a
    # position uniform over the first n - 2, the trigger again appended at the end.
    n = 256
    t = InductionHeadsTask(seq_len=n + 1, vocab_size=16, data_vocab=14)
    x, y, m = t.batch(20000, gen(2))
    special = x == 15
    assert (special.sum(1) == 2).all() and special[:, -1].all()
    ordinary = x[~special]
    assert int(ordinary.max()) == 13 and int(ordinary.min()) == 0, "14 ordinary ids, id 14 unused"
    p = special.double().argmax(1).long()
    assert int(p.min()) == 0 and int(p.max()) == n - 3
    counts = torch.bincount(p, minlength=n - 2).double()
    assert counts.numel() == n - 2
    # uniform over n - 2 = 254 positions, 20000 draws: about 79 a position
    assert float(counts.min()) > 40 and float(counts.max()) < 125
    assert torch.equal(y[:, -1], x.gather(1, (p + 1)[:, None]).squeeze(1)) and (m.sum(1) == 1).all()


@pytest.mark.parametrize("k", [6, 10, 14, 20])
def test_table11_test_lengths(k):
    t = InductionHeadsTask().with_length(2**k)
    x, y, m = t.batch(2 if k < 20 else 1, gen(k))
    assert x.shape[1] == 2**k == t.seq_len
    assert ((x == t.special).sum(1) == 2).all() and m[:, -1].all() and (m.sum(1) == 1).all()
    p = (x == t.special).double().argmax(1).long()
    assert torch.equal(y[:, -1], x.gather(1, (p + 1)[:, None]).squeeze(1))


def test_make_task_knobs_for_both_tables():
    sc = make_task("selective_copy", seq_len=4096, num_tokens=16, vocab_size=16)
    ih = make_task("induction_heads", seq_len=256, vocab_size=16, data_vocab=14)
    assert sc == SelectiveCopyTask() and ih.data_vocab == 14
