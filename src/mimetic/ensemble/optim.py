"""AdamW and gradient clipping over stacked (K, ...) parameters, one setting per member.

``torch.optim.AdamW`` takes one learning rate and weight decay per parameter group; an
ensemble needs one per member *within* each stacked tensor. ``StackedAdamW`` performs the
update of ``torch.optim.AdamW`` (``decoupled`` weight decay, bias-corrected moments) with the
per-member factors given as tensors, so that member k follows exactly the trajectory its
own ``torch.optim.AdamW`` would (tested against it), and the whole step is tensor ops with
no host values that change between steps: it can be captured in a CUDA graph.

Its state converts to and from the ``state_dict`` of a member's own ``torch.optim.AdamW``
(:meth:`StackedAdamW.member_state_dict`, :meth:`StackedAdamW.load_member_state_dict`), so a
checkpoint written by an ensemble resumes in a single run and the other way round.
"""
from __future__ import annotations

import math

import torch

from ..train.optim import param_groups


class StackedAdamW:
    """AdamW over ``params`` [(name, (K, ...) tensor)], shared betas/eps, per-member lr and
    weight decay supplied at each step (see :meth:`step`).

    ``decay`` names the parameters that get weight decay (the others: none), as
    ``mimetic.train.optim.param_groups`` decides for a member.
    """

    def __init__(self, params: list[tuple[str, torch.Tensor]], decay: set[str],
                 betas: tuple[float, float], eps: float):
        self.params = params
        self.decay = decay
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.exp_avg = [torch.zeros_like(p) for _, p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for _, p in params]
        self.steps_done = 0  # optimizer steps taken (the same for every member)

    @staticmethod
    def _per_member(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return t.view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, factors: torch.Tensor) -> None:
        """One AdamW step of every member. ``factors`` (3, K) float32, per member:
        ``decay_factor = 1 - lr * weight_decay``, ``step_size = lr / (1 - beta1^t)`` and
        (row 2, any column) ``sqrt(1 - beta2^t)`` for this step t (see :func:`adamw_factors`).
        Parameters without a gradient are skipped."""
        decay_factor, step_size, bc2_sqrt = factors[0], factors[1], factors[2, 0]
        for (name, p), m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            g = p.grad
            if g is None:
                continue
            if name in self.decay:
                p.mul_(self._per_member(decay_factor, p))
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            p.add_(torch.mul(m, self._per_member(-step_size, p)).div_(denom))
        self.steps_done += 1

    # ---- a member's view as a torch.optim.AdamW --------------------------------------------

    def _member_optimizer(self, model: torch.nn.Module, lr: float, weight_decay: float):
        groups = param_groups(model, weight_decay)
        return torch.optim.AdamW(groups, lr=lr, betas=(self.beta1, self.beta2), eps=self.eps)

    def member_state_dict(self, k: int, model: torch.nn.Module, lr: float, weight_decay: float) -> dict:
        """Member ``k``'s state as ``torch.optim.AdamW(param_groups(model, wd)).state_dict()``
        (``model``: a MambaLM of the ensemble's shape; its parameters are only keys)."""
        opt = self._member_optimizer(model, lr, weight_decay)
        if self.steps_done:
            slot = {id(model.get_parameter(n)): i for i, (n, _) in enumerate(self.params)}
            for group in opt.param_groups:
                for q in group["params"]:
                    i = slot[id(q)]
                    opt.state[q] = {
                        "step": torch.tensor(float(self.steps_done)),
                        "exp_avg": self.exp_avg[i][k].detach().cpu().clone(),
                        "exp_avg_sq": self.exp_avg_sq[i][k].detach().cpu().clone(),
                    }
        return opt.state_dict()

    @torch.no_grad()
    def load_member_state_dict(self, k: int, model: torch.nn.Module, state: dict) -> int:
        """Put a member's ``torch.optim.AdamW`` state (as saved by ``train()`` or
        :meth:`member_state_dict`) into slot ``k``; returns its step count (0 if empty)."""
        opt = self._member_optimizer(model, 1.0, 0.0)
        opt.load_state_dict(state)
        slot = {id(model.get_parameter(n)): i for i, (n, _) in enumerate(self.params)}
        steps = 0
        for group in opt.param_groups:
            for q in group["params"]:
                s = opt.state.get(q)
                if not s:
                    continue
                i = slot[id(q)]
                self.exp_avg[i][k].copy_(s["exp_avg"])
                self.exp_avg_sq[i][k].copy_(s["exp_avg_sq"])
                steps = int(s["step"])
        return steps


def adamw_factors(lrs: list[float], weight_decays: list[float], beta1: float, beta2: float,
                  t: int) -> torch.Tensor:
    """(3, K) float32 step factors of :meth:`StackedAdamW.step` for optimizer step t (1-based),
    computed in float64 as ``torch.optim.AdamW`` computes its Python scalars."""
    bc1, bc2_sqrt = 1 - beta1 ** t, math.sqrt(1 - beta2 ** t)
    rows = [[1 - lr * wd for lr, wd in zip(lrs, weight_decays)],
            [lr / bc1 for lr in lrs],
            [bc2_sqrt] * len(lrs)]
    return torch.tensor(rows, dtype=torch.float64).float()


@torch.no_grad()
def clip_stacked_grad_norm_(params: list[torch.Tensor], max_norm: torch.Tensor) -> torch.Tensor:
    """Per-member ``torch.nn.utils.clip_grad_norm_``: the global L2 norm of member k's
    gradients over every stacked parameter, clipped to ``max_norm[k]`` (inf = off).
    params: (K, ...) tensors; max_norm (K,). Returns the norms before clipping (K,)."""
    grads = [p.grad for p in params if p.grad is not None]
    sq = torch.stack([g.flatten(1).float().pow(2).sum(1) for g in grads]).sum(0)
    norm = sq.sqrt()
    # A member without clipping (inf) keeps its gradients as they are, also when their norm
    # overflows (inf / inf would be NaN), as train() does without grad_clip.
    coef = torch.where(torch.isinf(max_norm), 1.0, (max_norm / (norm + 1e-6)).clamp(max=1.0))
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
    return norm
