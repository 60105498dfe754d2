"""A K-model ensemble must be exactly K independent runs.

``mimetic.ensemble`` trains K same-shape ``MambaLM`` as one stacked program; every member
must get what ``mimetic.train.train(model, task, config)`` would give it alone: the same
forward and gradients, AdamW trajectory, clipping, schedule, evaluations, early stop,
non-finite handling, checkpoints (in ``train()``'s format, resumable both ways) and result,
within fp32 round-off on the CPU.
"""
from __future__ import annotations

import json
import re

import pytest
import torch

from mimetic.ensemble import EnsembleLM
from mimetic.ensemble import train as ens_train
from mimetic.ensemble.optim import StackedAdamW, adamw_factors, clip_stacked_grad_norm_
from mimetic.ensemble.train import PER_MEMBER_FIELDS, shared_config_problems, train_ensemble
from mimetic.models import MambaConfig, MambaLM
from mimetic.modules import MHA
from mimetic.tasks import make_task, scored_slots
from mimetic.train import NonFiniteLossError, TrainConfig, TrainResult, param_groups, read_metrics, train, wants_decay
from mimetic.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

TASK = make_task("copy", vocab=5, copy_len=6)

MAMBA1 = dict(ssm_cfg=dict(layer="Mamba1", d_state=4))
MAMBA2 = dict(ssm_cfg=dict(layer="Mamba2", d_state=4, headdim=8, chunk_size=8))
ATTN_CFG = dict(num_heads=4, num_heads_kv=2, head_dim=8, rotary_emb_dim=4)
KINDS = {
    "mamba1": MAMBA1,
    "mamba1_bias": dict(ssm_cfg=dict(layer="Mamba1", d_state=4, bias=True, conv_bias=False, dt_rank=3)),
    "mamba2": MAMBA2,
    "mamba2_g2_Dhdim_nonorm": dict(ssm_cfg=dict(layer="Mamba2", d_state=4, headdim=8, chunk_size=8, ngroups=2,
                                                D_has_hdim=True, rmsnorm=False)),
    "mamba2_g2_norm_before_gate": dict(ssm_cfg=dict(layer="Mamba2", d_state=4, headdim=8, chunk_size=8,
                                                    ngroups=2, norm_before_gate=True)),
    "attention": dict(attn_layer_idx=[0, 1], attn_cfg=ATTN_CFG),
    "mixed": dict(n_layer=3, attn_layer_idx=[1], ssm_cfg=MAMBA2["ssm_cfg"],
                  attn_cfg=dict(num_heads=2, num_heads_kv=1, rotary_emb_dim=2)),
    "untied": dict(tie_embeddings=False, **MAMBA1),
    "linear_attention": dict(ssm_cfg=dict(layer="LinearAttention", d_state=4, headdim=8, chunk_size=8)),
    "linear_attention_g1_elu_nonorm": dict(ssm_cfg=dict(layer="LinearAttention", d_state=4, headdim=8, ngroups=1,
                                                        feature_map="elu1", norm=False, bias=True)),
}


def model_config(kind: str, init: str = "default", **over) -> MambaConfig:
    if KINDS[kind].get("ssm_cfg", {}).get("layer") == "LinearAttention":
        init = "default"  # a baseline: mimetic init does not apply (MambaConfig refuses it)
    fields = dict(d_model=16, n_layer=2, vocab_size=TASK.vocab_size, init=init)
    fields.update(KINDS[kind])
    fields.update(over)
    return MambaConfig(**fields)


def build(kind: str, seed: int, init: str = "default", **over) -> MambaLM:
    torch.manual_seed(seed)
    return MambaLM(model_config(kind, init, **over))


SHARED = dict(steps=12, batch_size=4, eval_every=2, eval_batches=1, progress=False, device="cpu")


def tcfg(**kw) -> TrainConfig:
    # ``unchecked``: fields set after construction, past TrainConfig's entry checks (a test
    # that needs a value no user may pass, e.g. a negative weight decay to blow weights up)
    unchecked = kw.pop("unchecked", {})
    cfg = TrainConfig(**{**SHARED, **kw})
    for name, value in unchecked.items():
        setattr(cfg, name, value)
    return cfg


# Three members: two data seeds, both inits, different lr / schedule / clipping / decay.
# (model init seed, init, per-member TrainConfig fields)
MEMBERS = [
    (0, "default", dict(seed=0, lr=3e-3, warmup_steps=2, grad_clip=1.0, weight_decay=0.1)),
    (1, "mimetic", dict(seed=1, lr=1e-2, warmup_steps=4, min_lr_ratio=0.5, grad_clip=0.05, weight_decay=0.0)),
    (2, "mimetic", dict(seed=0, lr=5e-3, warmup_steps=0, grad_clip=None, weight_decay=0.3)),
]

COMPARED = ("loss", "token_acc", "seq_acc", "train_loss")
RESULT_FIELDS = ("step", "steps_to_target", "stopped_early", "interrupted", "n_params", "tokens")


def assert_history_close(got: list[dict], want: list[dict], tol: float = 1e-5, rel: float = 0.0) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        for key in COMPARED:
            assert g[key] == pytest.approx(w[key], abs=tol, rel=rel), (g["step"], key, g[key], w[key])
        assert g["lr"] == pytest.approx(w["lr"], rel=1e-12), (g["step"], "lr")


def assert_result_matches(got: TrainResult, want: TrainResult, tol: float = 1e-5) -> None:
    assert isinstance(got, TrainResult), got
    for f in RESULT_FIELDS:
        assert getattr(got, f) == getattr(want, f), f
    assert_history_close(got.history, want.history, tol)
    assert (got.final is None) == (want.final is None)
    if want.final is not None:
        assert_history_close([got.final, got.best], [want.final, want.best], tol)


def assert_params_close(got: torch.nn.Module, want: torch.nn.Module, tol: float = 1e-5,
                        skip: dict[str, torch.Tensor] | None = None) -> None:
    """Every parameter within ``tol`` (absolute); ``skip[name]``: a bool mask of entries left out."""
    for name, p in want.named_parameters():
        q = got.get_parameter(name).detach()
        p = p.detach()
        if skip and name in skip:
            q, p = q[~skip[name]], p[~skip[name]]
        torch.testing.assert_close(q, p, rtol=0, atol=tol, msg=lambda m, name=name: f"{name}: {m}")


def assert_params_equal(got: torch.nn.Module, want: torch.nn.Module) -> None:
    """Bit for bit (NaN where NaN: a diverged run's checkpoint can hold some)."""
    for name, p in want.named_parameters():
        torch.testing.assert_close(got.get_parameter(name), p, rtol=0, atol=0, equal_nan=True,
                                   msg=lambda m, name=name: f"{name}: {m}")


def zero_gradient_entries(model: MambaLM) -> dict[str, torch.Tensor]:
    """Entries of attention ``in_proj.bias`` whose gradient is analytically zero: the key
    bias outside the rotary dimensions. Its score term q_i . b_k is the same for every key
    j of query i, and softmax is invariant to a per-query constant. (Inside the rotary
    dims the term is q_i . R_(j-i) b_k, which depends on j: those entries do learn and are
    compared.) Their gradient is pure round-off noise (~1e-10), which Adam normalises to
    steps of ~lr in a direction that differs between two summation orders, so an ensemble
    and a lone run legitimately disagree there, and only there. The entries have no
    effect on the outputs, so nothing else is affected."""
    masks = {}
    for i, layer in enumerate(model.backbone.layers):
        m = layer.mixer
        if isinstance(m, MHA):
            mask = torch.zeros(m.in_proj.bias.shape, dtype=torch.bool)
            k0 = m.num_heads * m.head_dim
            mask[k0:k0 + m.num_heads_kv * m.head_dim].view(m.num_heads_kv, m.head_dim)[:, m.rotary_emb_dim:] = True
            masks[f"backbone.layers.{i}.mixer.in_proj.bias"] = mask
    return masks


def nonfinite_step(err: Exception) -> int:
    found = re.search(r"(?:at|after) step (\d+)", str(err))  # loss / weights (at a checkpoint)
    assert found, f"no step named in {err!r}"
    return int(found.group(1))


def checkpoint_steps(out) -> list[int]:
    return [s for s, _ in list_checkpoints(out)]


def run_separately(kind, members, tmp_path=None, tag="sep", task=TASK, **shared):
    """Each member through plain ``train()``: [(model, result or exception)]."""
    runs = []
    for i, (mseed, init, fields) in enumerate(members):
        model = build(kind, mseed, init, vocab_size=task.vocab_size)
        extra = dict(out_dir=str(tmp_path / tag / str(i))) if tmp_path is not None else {}
        cfg = tcfg(**{**shared, **fields, **extra})
        try:
            runs.append((model, train(model, task, cfg)))
        except NonFiniteLossError as e:
            runs.append((model, e))
    return runs


def run_together(kind, members, tmp_path=None, tag="ens", task=TASK, **shared):
    """All members as one ``train_ensemble``: (models, results)."""
    models = [build(kind, mseed, init, vocab_size=task.vocab_size) for mseed, init, _ in members]
    cfgs = [tcfg(**{**shared, **fields, **(dict(out_dir=str(tmp_path / tag / str(i))) if tmp_path else {})})
            for i, (_, _, fields) in enumerate(members)]
    return models, train_ensemble(models, task, cfgs)


# ---- 1. EnsembleLM forward/backward == the members' ------------------------------------------

@pytest.mark.parametrize("length", [13, 1])
@pytest.mark.parametrize("kind", list(KINDS))
def test_forward_and_backward_match_members(kind, length):
    members = [build(kind, 0, "default"), build(kind, 1, "mimetic"), build(kind, 2, "default")]
    K = len(members)
    ens = EnsembleLM(members)
    assert ens.K == K and [n for n, _ in ens.named_stacked()] == [n for n, _ in members[0].named_parameters()]
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, TASK.vocab_size, (3, length, K), generator=gen)

    logits = ens(ids)
    ref = torch.stack([m(ids[..., k]) for k, m in enumerate(members)], dim=2)
    assert logits.shape == (3, length, K, TASK.vocab_size)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)

    # Gradients of a random linear functional of the logits.
    weights = torch.randn(ref.shape, generator=gen)
    (logits * weights).sum().backward()
    (ref * weights).sum().backward()
    for name, stacked in ens.named_stacked():
        assert stacked.grad is not None, name
        for k, m in enumerate(members):
            g = m.get_parameter(name).grad
            scale = float(g.abs().max()) + 1e-12
            torch.testing.assert_close(stacked.grad[k], g, rtol=1e-4, atol=1e-5 * scale,
                                       msg=lambda s, name=name, k=k: f"{name}[{k}]: {s}")


def test_members_in_and_out():
    members = [build("mamba2", s) for s in range(3)]
    ens = EnsembleLM(members)
    other = build("mamba2", 7)
    ens.load_member(1, other)
    out = ens.write_member(1, build("mamba2", 8))
    assert_params_equal(out, other)
    assert_params_equal(ens.write_member(0, build("mamba2", 9)), members[0])
    with pytest.raises(ValueError, match="shape"):
        ens(torch.zeros(2, 5, 2, dtype=torch.long))  # K=3 ensemble, 2 model columns


@pytest.mark.parametrize("over, match", [
    (dict(d_intermediate=32), r"MLP.*d_intermediate"),
    (dict(rms_norm=False), r"LayerNorm.*rms_norm=False"),
])
def test_unsupported_configs_raise(over, match):
    with pytest.raises(ValueError, match=match):
        EnsembleLM([build("mamba1", 0, **over), build("mamba1", 1, **over)])


@pytest.mark.parametrize("other", [
    dict(ssm_cfg=dict(layer="Mamba1", d_state=8)),
    dict(d_model=32),
    dict(n_layer=3),
    dict(tie_embeddings=False),
])
def test_mismatched_shapes_raise(other):
    with pytest.raises(ValueError, match="member 1 differs in shape"):
        EnsembleLM([build("mamba1", 0), build("mamba1", 1, **other)])


def test_bad_members_raise():
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleLM([])
    with pytest.raises(TypeError, match="member 1 is a Linear"):
        EnsembleLM([build("mamba1", 0), torch.nn.Linear(2, 2)])


# ---- 2. StackedAdamW and clipping == torch's, per member ---------------------------------------

BETAS, EPS = (0.9, 0.95), 1e-8


def _random_grads(ens: EnsembleLM, members: list[MambaLM], gen: torch.Generator) -> None:
    for name, p in ens.named_stacked():
        p.grad = torch.randn(p.shape, generator=gen) * (0.1 + torch.rand((), generator=gen))
        for k, m in enumerate(members):
            m.get_parameter(name).grad = p.grad[k].clone()


def test_stacked_adamw_equals_torch_adamw_per_member():
    kind = "mixed"  # Mamba-2 and attention parameters: 1-D/2-D/3-D, decayed and not
    members = [build(kind, s) for s in range(3)]
    base_lr, wds = [1e-3, 3e-2, 5e-3], [0.1, 0.0, 0.5]
    ens = EnsembleLM(members)
    named = ens.named_stacked()
    decay = {n for n, p in members[0].named_parameters() if wants_decay(n, p)}
    assert decay and decay != {n for n, _ in named}
    opt = StackedAdamW(named, decay, BETAS, EPS)
    refs = [torch.optim.AdamW(param_groups(m, wd), lr=lr, betas=BETAS, eps=EPS)
            for m, lr, wd in zip(members, base_lr, wds)]
    gen = torch.Generator().manual_seed(0)

    def lrs_at(t):  # a per-member schedule that changes every step
        return [lr * (1 + t) / 4 for lr in base_lr]

    def step_both(t):
        _random_grads(ens, members, gen)
        opt.step(adamw_factors(lrs_at(t), wds, *BETAS, t + 1))
        for ref, lr in zip(refs, lrs_at(t)):
            for g in ref.param_groups:
                g["lr"] = lr
            ref.step()

    def check():
        for name, p in ens.named_stacked():
            for k, m in enumerate(members):
                torch.testing.assert_close(p[k], m.get_parameter(name), rtol=1e-6, atol=1e-7,
                                           msg=lambda s, name=name, k=k: f"{name}[{k}]: {s}")

    for t in range(4):
        step_both(t)
        check()
    assert opt.steps_done == 4

    # A member's state is torch.optim.AdamW's state_dict: same structure and moments ...
    for k, (m, ref) in enumerate(zip(members, refs)):
        mine, theirs = opt.member_state_dict(k, m, lrs_at(3)[k], wds[k]), ref.state_dict()
        assert mine["param_groups"] == theirs["param_groups"]
        assert mine["state"].keys() == theirs["state"].keys()
        for i, s in theirs["state"].items():
            assert float(mine["state"][i]["step"]) == float(s["step"]) == 4
            torch.testing.assert_close(mine["state"][i]["exp_avg"], s["exp_avg"], rtol=1e-5, atol=1e-9)
            torch.testing.assert_close(mine["state"][i]["exp_avg_sq"], s["exp_avg_sq"], rtol=1e-5, atol=1e-12)

    # ... that a fresh torch AdamW loads and continues from exactly as the stacked one does.
    copies = [ens.write_member(k, build(kind, 10 + k)) for k in range(3)]
    cont = []
    for k, c in enumerate(copies):
        o = torch.optim.AdamW(param_groups(c, wds[k]), lr=1.0, betas=BETAS, eps=EPS)
        o.load_state_dict(opt.member_state_dict(k, members[k], lrs_at(3)[k], wds[k]))
        cont.append(o)
    members[:], refs[:] = copies, cont
    for t in range(4, 7):
        step_both(t)
        check()

    # Round trip: a fresh StackedAdamW loading every member's state holds the same moments;
    # an empty (never stepped) state loads as step 0.
    fresh = StackedAdamW(EnsembleLM(members).named_stacked(), decay, BETAS, EPS)
    for k, m in enumerate(members):
        assert fresh.load_member_state_dict(k, m, opt.member_state_dict(k, m, 1e-3, wds[k])) == 7
        # and a torch AdamW's own state_dict (what train() checkpoints) loads the same
        assert fresh.load_member_state_dict(k, m, refs[k].state_dict()) == 7
    for a, b in zip(opt.exp_avg + opt.exp_avg_sq, fresh.exp_avg + fresh.exp_avg_sq):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
    blank = StackedAdamW(EnsembleLM(members).named_stacked(), decay, BETAS, EPS)
    empty = blank.member_state_dict(0, members[0], 1e-3, 0.1)
    assert empty["state"] == {}
    assert blank.load_member_state_dict(0, members[0], empty) == 0


def test_stacked_adamw_round_trip_is_exact():
    members = [build("mamba1", s) for s in range(2)]
    ens = EnsembleLM(members)
    decay = {n for n, p in members[0].named_parameters() if wants_decay(n, p)}
    opt = StackedAdamW(ens.named_stacked(), decay, BETAS, EPS)
    gen = torch.Generator().manual_seed(1)
    for t in range(3):
        _random_grads(ens, members, gen)
        opt.step(adamw_factors([1e-3, 2e-3], [0.1, 0.0], *BETAS, t + 1))
    opt.steps_done = 3
    back = StackedAdamW(EnsembleLM(members).named_stacked(), decay, BETAS, EPS)
    for k in (1, 0):
        back.load_member_state_dict(k, members[k], opt.member_state_dict(k, members[k], 1e-3, 0.1))
    for a, b in zip(opt.exp_avg + opt.exp_avg_sq, back.exp_avg + back.exp_avg_sq):
        assert torch.equal(a, b)


def test_adamw_factors():
    f = adamw_factors([1e-3, 2e-2], [0.1, 0.0], 0.9, 0.95, t=3)
    assert f.shape == (3, 2) and f.dtype == torch.float32
    torch.testing.assert_close(f[0], torch.tensor([1 - 1e-4, 1.0]))
    torch.testing.assert_close(f[1], torch.tensor([1e-3, 2e-2]) / (1 - 0.9 ** 3))
    torch.testing.assert_close(f[2], torch.full((2,), (1 - 0.95 ** 3) ** 0.5))


def test_clip_stacked_grad_norm_equals_torch_per_member():
    members = [build("mamba2", s) for s in range(3)]
    ens = EnsembleLM(members)
    gen = torch.Generator().manual_seed(2)
    scales = [1.0, 10.0, 1e-3]  # clipped hard, "clipped" with inf (off), under its max_norm
    max_norms = [0.5, float("inf"), 3.0]
    named = ens.named_stacked()
    for i, (name, p) in enumerate(named):
        if i == 1:  # a parameter without a gradient is skipped, as by torch
            p.grad = None
            for m in members:
                m.get_parameter(name).grad = None
            continue
        p.grad = torch.stack([torch.randn(p.shape[1:], generator=gen) * s for s in scales])
        for k, m in enumerate(members):
            m.get_parameter(name).grad = p.grad[k].clone()
    norms = clip_stacked_grad_norm_([p for _, p in named], torch.tensor(max_norms))
    for k, (m, mn) in enumerate(zip(members, max_norms)):
        want = torch.nn.utils.clip_grad_norm_(m.parameters(), mn)
        torch.testing.assert_close(norms[k], want, rtol=1e-6, atol=0)
        for name, p in named:
            if p.grad is not None:
                torch.testing.assert_close(p.grad[k], m.get_parameter(name).grad, rtol=1e-6, atol=1e-9)
    assert norms[0] > max_norms[0] and norms[2] < max_norms[2] and torch.isfinite(norms[1])
    # the clipped member ends at its max_norm, the others untouched in norm
    after = torch.stack([p.grad.flatten(1).pow(2).sum(1) for _, p in named if p.grad is not None]).sum(0).sqrt()
    torch.testing.assert_close(after, torch.stack([torch.tensor(0.5), norms[1], norms[2]]), rtol=1e-5, atol=0)


def test_clip_keeps_overflowing_gradients_of_members_without_clipping():
    """A member with max_norm inf is not clipped at all, as train() without grad_clip:
    its gradients stay as they are even when their norm overflows (inf / inf is NaN); a
    clipped member with an overflowing norm gets torch's answer (norm inf, gradients 0)."""
    members = [build("mamba1", s) for s in range(3)]
    ens = EnsembleLM(members)
    named = ens.named_stacked()
    gen = torch.Generator().manual_seed(4)
    for _, p in named:
        p.grad = torch.randn(p.shape, generator=gen)
        p.grad[:2] *= 1e30  # members 0 and 1: the squared norm overflows float32
    before = [p.grad.clone() for _, p in named]
    norms = clip_stacked_grad_norm_([p for _, p in named], torch.tensor([float("inf"), 1.0, float("inf")]))
    assert torch.isinf(norms[0]) and torch.isinf(norms[1]) and torch.isfinite(norms[2])
    for (name, p), b in zip(named, before):
        assert torch.equal(p.grad[0], b[0]) and torch.equal(p.grad[2], b[2]), name
        m = members[1].get_parameter(name)
        m.grad = b[1].clone()
    want = torch.nn.utils.clip_grad_norm_(members[1].parameters(), 1.0)
    assert torch.isinf(want)
    for name, p in named:
        assert torch.equal(p.grad[1], members[1].get_parameter(name).grad), name


def test_member_losses_equal_train_loss_and_ignore_unscored_logits():
    """Each member's loss is train()'s masked mean cross-entropy, gradient included; a
    non-finite logit at an unscored position reaches neither (train() drops those rows
    with logits[mask] before the cross-entropy)."""
    from mimetic.ensemble.train import member_losses
    from mimetic.train.loop import masked_loss_and_acc

    gen = torch.Generator().manual_seed(5)
    B, L, K, V = 3, 7, 3, 6
    base = torch.randn(B, L, K, V, generator=gen)
    targets = torch.randint(0, V, (B, L, K), generator=gen)
    mask = torch.rand(B, L, K, generator=gen) < 0.5
    mask[0, 0] = True  # every member scores something
    for poison in (None, float("nan"), float("inf"), -float("inf")):
        logits = base.clone()
        if poison is not None:  # member 1's unscored positions
            logits[..., 1, :][~mask[..., 1]] = poison
        logits.requires_grad_(True)
        losses = member_losses(logits, targets, mask)
        weights = torch.tensor([0.3, -1.2, 2.0])
        (losses * weights).sum().backward()
        assert torch.isfinite(losses).all() and torch.isfinite(logits.grad).all()
        for k in range(K):
            lk = base[:, :, k].clone().requires_grad_(True)
            want, _ = masked_loss_and_acc(lk, targets[:, :, k], mask[:, :, k])
            (want * weights[k]).backward()
            torch.testing.assert_close(losses[k], want, rtol=1e-6, atol=0)
            torch.testing.assert_close(logits.grad[:, :, k], lk.grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kind", ["mamba1", "mamba2", "attention"])
def test_logits_at_positions_are_the_full_logits_there(kind):
    """``forward(ids, positions)`` (the LM head at scored slots only) is the full forward
    gathered at each member's own positions, forward and backward."""
    members = [build(kind, 0, "default"), build(kind, 1, "mimetic"), build(kind, 2, "default")]
    K, B, L, P = len(members), 3, 11, 4
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, TASK.vocab_size, (B, L, K), generator=gen)
    positions = torch.randint(0, L, (B, P, K), generator=gen)  # repeats allowed, as padding slots
    ens = EnsembleLM(members)
    full = ens(ids)
    want = full.gather(1, positions[..., None].expand(-1, -1, -1, full.shape[-1]))
    got = ens(ids, positions)
    assert got.shape == (B, P, K, TASK.vocab_size)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    weights = torch.randn(want.shape, generator=gen)
    (got * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in ens.named_stacked()}
    ens.zero_grad()
    (want * weights).sum().backward()
    for name, p in ens.named_stacked():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    with pytest.raises(ValueError, match="positions must have shape"):
        ens(ids, positions[..., :2])


def test_scored_slots_keep_every_scored_position_in_order():
    mask = torch.tensor([[0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    targets = torch.arange(18).view(3, 6)
    positions, tgt, kept = scored_slots(targets, mask, 3)
    assert positions.shape == tgt.shape == kept.shape == (3, 3)
    assert positions[0].tolist() == [1, 3, 4] and kept[0].all()
    assert positions[1, 0] == 5 and kept[1].tolist() == [True, False, False]
    assert not kept[2].any()
    assert torch.equal(tgt, targets.gather(1, positions))
    # the kept slots are exactly the scored positions
    rebuilt = torch.zeros_like(mask)
    for b in range(3):
        rebuilt[b, positions[b][kept[b]]] = True
    assert torch.equal(rebuilt, mask)
    with pytest.raises(ValueError, match="copy: a sequence scores 3 positions, more than its max_scored=2"):
        scored_slots(targets, mask, 2, "copy")


# ---- 3. train_ensemble == separate train() runs -------------------------------------------------

@pytest.mark.parametrize("kind", ["mamba1", "mamba2", "attention", "linear_attention"])
def test_ensemble_training_equals_separate_runs(kind):
    separate = run_separately(kind, MEMBERS)
    models, results = run_together(kind, MEMBERS)
    skip = zero_gradient_entries(models[0])
    if kind == "attention":
        assert skip  # the exception below is real: check the gradient there is round-off
        m = build(kind, 0)
        ids, tgt, mask = TASK.batch(4, torch.Generator().manual_seed(0))
        torch.nn.functional.cross_entropy(m(ids)[mask], tgt[mask]).backward()
        for name, entries in skip.items():
            g = m.get_parameter(name).grad
            assert g[entries].abs().max() < 1e-6 * g[~entries].abs().max(), name
    else:
        assert skip == {}
    for (ref_model, ref), model, res in zip(separate, models, results):
        assert_result_matches(res, ref)
        assert not res.interrupted and len(res.history) == 6
        assert_params_close(model, ref_model, tol=1e-5, skip=skip)
    # members really differ (different data, init, lr): the equality above is not trivial
    losses = [tuple(r["train_loss"] for r in res.history) for res in results]
    assert len(set(losses)) == 3


@pytest.mark.parametrize("kind", ["mamba1", "mamba2"])
def test_ensemble_training_equals_separate_runs_where_few_positions_are_scored(kind):
    """MQAR scores 3 of 20 positions, at random places per sequence: the head at scored slots
    only gives train()'s numbers (train() takes the full logits and ``logits[mask]``)."""
    task = make_task("mqar", vocab_size=40, seq_len=20, num_kv_pairs=3)
    assert task.max_scored == 3 < task.seq_len
    separate = run_separately(kind, MEMBERS, task=task)
    models, results = run_together(kind, MEMBERS, task=task)
    for (ref_model, ref), model, res in zip(separate, models, results):
        assert_result_matches(res, ref)
        assert_params_close(model, ref_model, tol=1e-5)
    assert len({tuple(r["train_loss"] for r in res.history) for res in results}) == 3


def test_read_back_chunks_do_not_change_results(monkeypatch):
    """With a one-step chunk (the device log read back within an eval window) the run is
    the same as with a whole window per chunk."""
    members = MEMBERS[:2]
    models_a, res_a = run_together("mamba1", members, eval_every=4)
    monkeypatch.setattr(ens_train, "CHUNK_BYTES", 1)
    models_b, res_b = run_together("mamba1", members, eval_every=4)
    for ma, ra, mb, rb in zip(models_a, res_a, models_b, res_b):
        # train_loss is the window's mean of per-step losses, summed per read-back chunk
        # in float32: the chunking shows in its last bits only (~1e-7); everything else is
        # bit-identical
        assert_result_matches(rb, ra, tol=1e-6)
        assert [r["loss"] for r in rb.history] == [r["loss"] for r in ra.history]
        assert_params_equal(mb, ma)


# ---- 4. per-member early stop ------------------------------------------------------------------

def test_per_member_early_stop(tmp_path):
    members = [
        (0, "default", dict(seed=0, lr=3e-3, target_acc=1e-6)),                  # stops at the first eval
        (1, "mimetic", dict(seed=1, lr=1e-2, target_acc=1e-6, early_stop=False)),  # reaches it, trains on
        (2, "default", dict(seed=0, lr=5e-3, target_acc=None)),
    ]
    separate = run_separately("mamba1", members, tmp_path)
    models, results = run_together("mamba1", members, tmp_path)
    for i, ((ref_model, ref), model, res) in enumerate(zip(separate, models, results)):
        assert_result_matches(res, ref)
        # the stopped member ends holding its weights at the stop, as train() leaves them
        assert_params_close(model, ref_model)
        assert checkpoint_steps(tmp_path / "ens" / str(i)) == checkpoint_steps(tmp_path / "sep" / str(i))
        stored = json.loads((tmp_path / "ens" / str(i) / "result.json").read_text())
        assert stored == json.loads(json.dumps(res.to_dict()))
    early, late, plain = results
    assert early.stopped_early and early.step == 2 and early.steps_to_target == 2 and len(early.history) == 1
    assert early.tokens == 2 * 4 * TASK.seq_len
    assert not late.stopped_early and late.step == 12 and late.steps_to_target == 2 and len(late.history) == 6
    assert not plain.stopped_early and plain.step == 12 and plain.steps_to_target is None
    assert checkpoint_steps(tmp_path / "ens" / "0") == [2]


# ---- 5. a diverging member does not stop the others ---------------------------------------------

DIVERGING = {
    # lr 1e4 without clipping: NaN loss right after the first update
    "huge_lr": ("mamba1", dict(lr=1e4, warmup_steps=0, grad_clip=None), dict(checkpoint_every=1)),
    # the same in attention: here gradients overflow to inf steps before the loss turns
    # NaN (at step 4), and a member without clipping must keep them as they are
    "huge_lr_attention": ("attention", dict(lr=1e4, warmup_steps=0, grad_clip=None), dict(checkpoint_every=1)),
    # decoupled weight decay of -9 multiplies the weights by 10 every step: a deterministic
    # blow-up a few steps in, inside an eval window and after checkpoints were written
    # (TrainConfig refuses a negative weight decay, hence set past its checks)
    "growing_weights": ("mamba2", dict(lr=1.0, warmup_steps=0, min_lr_ratio=1.0, unchecked=dict(weight_decay=-9.0),
                                       grad_clip=1.0), dict(checkpoint_every=2, eval_every=4)),
}


@pytest.mark.parametrize("chunk_bytes", [None, 1])
@pytest.mark.parametrize("case", list(DIVERGING))
def test_diverging_member_does_not_stop_the_others(case, chunk_bytes, tmp_path, monkeypatch):
    if chunk_bytes is not None:  # read the device log back every step
        monkeypatch.setattr(ens_train, "CHUNK_BYTES", chunk_bytes)
    kind, bad_fields, shared = DIVERGING[case]
    members = [MEMBERS[0], (5, "default", dict(seed=1, **bad_fields)), MEMBERS[1]]
    separate = run_separately(kind, members, tmp_path, **shared)
    models, results = run_together(kind, members, tmp_path, **shared)

    (_, ref_err), err = separate[1], results[1]
    assert isinstance(ref_err, NonFiniteLossError), "the lone run must diverge for this test to mean anything"
    assert isinstance(err, NonFiniteLossError), err
    step = nonfinite_step(err)
    assert step == nonfinite_step(ref_err)
    if case == "growing_weights":
        assert step > shared["checkpoint_every"]  # after a checkpoint, inside a read-back window
    # same message: what went non-finite, where, and the last good checkpoint
    sep_out, ens_out = str(tmp_path / "sep" / "1"), str(tmp_path / "ens" / "1")
    assert str(err).replace(ens_out, "<out>") == str(ref_err).replace(sep_out, "<out>")
    # on disk: the newest checkpoint is at or before the bad step, the same as train()'s; no result
    ckpts = checkpoint_steps(ens_out)
    assert ckpts == checkpoint_steps(sep_out)
    assert all(s <= step for s in ckpts)
    if case == "growing_weights":
        assert ckpts and ckpts[-1] == step // shared["checkpoint_every"] * shared["checkpoint_every"]
    assert not (tmp_path / "ens" / "1" / "result.json").exists()
    # Its evaluations before the blow-up are logged at the same steps. (Their values are
    # not compared: with weights growing 10x a step, fp32 round-off grows with them, to a
    # relative 3e-5 in the weights by step 2 and 4e-2 by step 4, in the lone run as much as
    # in the ensemble; the healthy members below are compared tightly.)
    assert [r["step"] for r in read_metrics(ens_out)] == [r["step"] for r in read_metrics(sep_out)]
    # its model holds the weights of its newest checkpoint (or, with none, its initial ones);
    # a checkpoint is never written with NaN/inf in it, so it loads as it is
    want = build(kind, 5)
    if ckpts:
        load_checkpoint(latest_checkpoint(ens_out), want)
    assert_params_equal(models[1], want)

    for i in (0, 2):
        (ref_model, ref), model, res = separate[i], models[i], results[i]
        assert_result_matches(res, ref)
        assert res.step == 12 and not res.stopped_early
        assert_params_close(model, ref_model, skip=zero_gradient_entries(model))
        assert (tmp_path / "ens" / str(i) / "result.json").exists()


# ---- 6. checkpoints and resume -----------------------------------------------------------------

RESUME_MEMBERS = [MEMBERS[0], MEMBERS[1]]
RESUME_SHARED = dict(checkpoint_every=4)


def _ens_configs(tmp_path, tag, **kw):
    return [tcfg(**{**RESUME_SHARED, **fields, "out_dir": str(tmp_path / tag / str(i)), **kw})
            for i, (_, _, fields) in enumerate(RESUME_MEMBERS)]


def _models(seed_offset=0):
    return [build("mamba1", mseed + seed_offset, init) for mseed, init, _ in RESUME_MEMBERS]


def test_interrupted_and_resumed_ensemble_equals_uninterrupted(tmp_path):
    full_models = _models()
    full = train_ensemble(full_models, TASK, _ens_configs(tmp_path, "full"))

    part = train_ensemble(_models(), TASK, _ens_configs(tmp_path, "split", interrupt_after=6))
    for i, r in enumerate(part):
        assert r.interrupted and r.step == 6 and [h["step"] for h in r.history] == [2, 4, 6]
        assert checkpoint_steps(tmp_path / "split" / str(i)) == [4, 6]
        assert not (tmp_path / "split" / str(i) / "result.json").exists()
    # fresh, differently initialised models: the weights must come from the checkpoints
    resumed_models = _models(seed_offset=50)
    resumed = train_ensemble(resumed_models, TASK, _ens_configs(tmp_path, "split", resume=True))
    for i, (fm, f, rm, r) in enumerate(zip(full_models, full, resumed_models, resumed)):
        assert not r.interrupted
        assert_result_matches(r, f, tol=0)
        assert_params_equal(rm, fm)
        assert [x["step"] for x in read_metrics(tmp_path / "split" / str(i))] == [2, 4, 6, 8, 10, 12]
        assert_history_close(read_metrics(tmp_path / "split" / str(i)), f.history, tol=0)


def test_ensemble_checkpoint_resumes_in_train_and_back(tmp_path):
    # Reference: uninterrupted lone runs.
    refs = []
    for mseed, init, fields in RESUME_MEMBERS:
        model = build("mamba1", mseed, init)
        refs.append((model, train(model, TASK, tcfg(**RESUME_SHARED, **fields))))

    # ensemble interrupted at 6 -> each member resumed by plain train()
    train_ensemble(_models(), TASK, _ens_configs(tmp_path, "e2t", interrupt_after=6))
    # (another random init of the member's config: the checkpoint's weights replace it)
    for cfg, (ref_model, ref), (_, init, _) in zip(_ens_configs(tmp_path, "e2t", resume=True), refs, RESUME_MEMBERS):
        model = build("mamba1", 99, init)
        res = train(model, TASK, cfg)
        assert_result_matches(res, ref)
        assert_params_close(model, ref_model)

    # train() interrupted at 6 -> both resumed together by train_ensemble
    for model, cfg in zip(_models(), _ens_configs(tmp_path, "t2e", interrupt_after=6)):
        assert train(model, TASK, cfg).interrupted
    models = _models(seed_offset=70)
    results = train_ensemble(models, TASK, _ens_configs(tmp_path, "t2e", resume=True))
    for model, res, (ref_model, ref) in zip(models, results, refs):
        assert_result_matches(res, ref)
        assert_params_close(model, ref_model)


def test_resume_with_interrupt_at_or_before_the_checkpoint_step_matches_train(tmp_path):
    """train() resumed at step 6 with interrupt_after=6 trains one more step and stops."""
    train_ensemble(_models(), TASK, _ens_configs(tmp_path, "ens", interrupt_after=6))
    for model, cfg in zip(_models(), _ens_configs(tmp_path, "sep", interrupt_after=6)):
        train(model, TASK, cfg)
    lone = [train(build("mamba1", 99, init), TASK, cfg)
            for cfg, (_, init, _) in zip(_ens_configs(tmp_path, "sep", resume=True, interrupt_after=6), RESUME_MEMBERS)]
    together = train_ensemble(_models(90), TASK, _ens_configs(tmp_path, "ens", resume=True, interrupt_after=6))
    for i, (a, b) in enumerate(zip(together, lone)):
        assert b.interrupted and b.step == 7
        assert_result_matches(a, b)
        assert checkpoint_steps(tmp_path / "ens" / str(i)) == checkpoint_steps(tmp_path / "sep" / str(i)) == [6, 7]


def _tree(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_member_out_dirs_look_like_train_out_dirs(tmp_path):
    cfgs = _ens_configs(tmp_path, "ens", keep_checkpoints=3)
    results = train_ensemble(_models(), TASK, cfgs)
    for i, ((mseed, init, fields), _, res) in enumerate(zip(RESUME_MEMBERS, cfgs, results)):
        ens_out, sep_out = tmp_path / "ens" / str(i), tmp_path / "sep" / str(i)
        ref = train(build("mamba1", mseed, init), TASK,
                    tcfg(**RESUME_SHARED, **fields, out_dir=str(sep_out), keep_checkpoints=3))
        assert _tree(ens_out) == _tree(sep_out)
        assert {"metrics.jsonl", "result.json", "checkpoints/step_0000012/model.safetensors",
                "checkpoints/step_0000012/state.pt"} <= _tree(ens_out)
        assert checkpoint_steps(ens_out) == [4, 8, 12]
        assert_history_close(read_metrics(ens_out), read_metrics(sep_out))
        assert read_metrics(ens_out) == json.loads(json.dumps(res.history))
        stored = json.loads((ens_out / "result.json").read_text())
        assert stored == json.loads(json.dumps(res.to_dict()))
        assert stored.keys() == json.loads((sep_out / "result.json").read_text()).keys()
        assert_result_matches(TrainResult.from_dict(stored), ref)
        for step in (4, 12):
            name = f"checkpoints/step_{step:07d}/state.pt"
            mine = torch.load(ens_out / name, weights_only=True)
            theirs = torch.load(sep_out / name, weights_only=True)
            assert mine.keys() == theirs.keys()
            for key in ("format", "step", "scheduler", "data", "tokens", "steps_to_target", "config"):
                if key == "config":
                    assert {**mine[key], "out_dir": None} == {**theirs[key], "out_dir": None}
                else:
                    assert mine[key] == theirs[key], key
            assert mine["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
            assert mine["optimizer"]["state"].keys() == theirs["optimizer"]["state"].keys()
            for j, s in theirs["optimizer"]["state"].items():
                assert float(mine["optimizer"]["state"][j]["step"]) == float(s["step"]) == step
                assert mine["optimizer"]["state"][j]["exp_avg"].shape == s["exp_avg"].shape
            assert mine["rng"].keys() == theirs["rng"].keys()
            assert_history_close(mine["history"], theirs["history"])


def test_finished_member_returns_its_stored_result(tmp_path):
    first_models = _models()
    first = train_ensemble(first_models, TASK, _ens_configs(tmp_path, "ens"))
    cfgs = _ens_configs(tmp_path, "ens", resume=True)
    # member 0 finished; member 1 gets a fresh out_dir and trains (from scratch) alongside
    cfgs[1] = tcfg(**{**RESUME_SHARED, **RESUME_MEMBERS[1][2], "out_dir": str(tmp_path / "new"), "resume": True})
    models = _models(seed_offset=40)
    fresh_1 = build("mamba1", RESUME_MEMBERS[1][0], RESUME_MEMBERS[1][1])
    models[1] = fresh_1
    again = train_ensemble(models, TASK, cfgs)
    assert again[0].to_dict() == json.loads(json.dumps(first[0].to_dict()))
    assert_params_equal(models[0], first_models[0])  # the final weights are loaded
    # (trained in a one-member ensemble now, a two-member one before: round-off apart)
    assert_result_matches(again[1], first[1])
    assert_params_close(models[1], first_models[1])
    # everyone finished: nothing trains, the stored results come back
    models = _models(seed_offset=60)
    done = train_ensemble(models, TASK, _ens_configs(tmp_path, "ens", resume=True))
    assert [r.to_dict() for r in done] == [json.loads(json.dumps(r.to_dict())) for r in first]
    for m, fm in zip(models, first_models):
        assert_params_equal(m, fm)


def test_members_resuming_from_different_steps_raise(tmp_path):
    cfgs = _ens_configs(tmp_path, "ens")
    for model, cfg, stop in zip(_models(), cfgs, (4, 6)):
        train(model, TASK, tcfg(**{**cfg.to_dict(), "interrupt_after": stop}))
    with pytest.raises(ValueError, match=r"different steps \[4, 6\]"):
        train_ensemble(_models(), TASK, _ens_configs(tmp_path, "ens", resume=True))


def test_fresh_run_into_a_used_out_dir_raises(tmp_path):
    train_ensemble(_models(), TASK, _ens_configs(tmp_path, "ens", interrupt_after=4))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train_ensemble(_models(), TASK, _ens_configs(tmp_path, "ens"))


# ---- 7. config validation ----------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("batch_size", 8), ("steps", 10), ("eval_every", 3), ("betas", (0.9, 0.99)), ("eval_seed", 1),
    ("checkpoint_every", 3), ("resume", True),
])
def test_configs_differing_in_a_shared_field_raise(field, value, tmp_path):
    a = tcfg(out_dir=str(tmp_path / "a"))
    b = tcfg(out_dir=str(tmp_path / "b"), **{field: value})
    assert shared_config_problems([a, b]) == [field]
    with pytest.raises(ValueError, match=rf"share TrainConfig fields \['{field}'\]"):
        train_ensemble(_models(), TASK, [a, b])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before any work


def test_per_member_fields_may_differ():
    a = tcfg()
    b = tcfg(seed=3, lr=1e-2, min_lr_ratio=0.5, warmup_steps=7, weight_decay=0.0, grad_clip=None,
             target_acc=0.5, early_stop=False, out_dir="x")
    assert {f for f in PER_MEMBER_FIELDS if getattr(a, f) != getattr(b, f)} == set(PER_MEMBER_FIELDS)
    assert shared_config_problems([a, b]) == []


def test_one_config_per_model():
    with pytest.raises(ValueError, match="2 models and 1 configs"):
        train_ensemble(_models(), TASK, [tcfg()])
    with pytest.raises(ValueError, match="0 models and 0 configs"):
        train_ensemble([], TASK, [])
