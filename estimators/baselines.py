"""Advantage parts beyond the group mean: the baselines of verl 0.9.1's advantage estimators
(``verl/trainer/ppo/core_algos.py``), each as Â = (what the row earned) − (its baseline).

Per-row or per-token ``[B, T]``, detached, computed once per step in the plan; statistics over
several rows are summed over ranks with ``all_reduce`` so the split never changes them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .batch import Batch
from .slots import Advantage
from .parts import KLInReward, WhitenedReturns, group_moments, kl_estimate, last_token, masked, whiten


def _kl_reward(coef: float, kind: str, b: Batch) -> Tensor:
    """[B, T] token rewards r·1[last] − β·k(log π_θold − log π_ref) (verl ``apply_kl_penalty``;
    no KL term without β or without ``logp_ref``)."""
    r = b.reward[:, None] * last_token(b.mask)
    if coef and b.logp_ref is not None:
        r = r - coef * masked(b, kl_estimate(kind, b.logp_old - b.logp_ref))
    return r * b.mask


@dataclass(frozen=True)
class GreedyBaseline(KLInReward):
    """ReMax (Li et al. arXiv 2310.10505 Eq. 6; verl ``remax``): Â_t = G_t − r(ȳ), the return
    from token t (the reward with verl's KL-in-reward, k1 to π_ref, β = kl_coef 0.001) minus the
    reward of the prompt's greedy rollout ȳ (``Batch.reward_baseline``). ȳ does not depend on
    the sampled row, so Â is unbiased for ∇J: E[(r − b)∇log π] = ∇J for any fixed b."""

    def formula(self) -> str:
        kl = f" − {self.kl_coef:g}·{self.kl_kind}(π_θold‖π_ref)" if self.kl_coef else ""
        return f"Σ_{{s≥t}} (r·1[last]{kl})_s − r(greedy)"

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        returns = WhitenedReturns(self.kl_coef, self.kl_kind, 1.0).returns(b)
        return returns - b.reward_baseline[:, None] * b.mask


@dataclass(frozen=True)
class LengthWeighted(Advantage):
    """OPO (On-Policy RL with Optimal reward baseline, arXiv 2505.23585 Eq. 9; verl ``opo``):
    Â_i = r_i − Σ_j |τ_j| r_j / Σ_j |τ_j| over the rollouts of the prompt (the variance-optimal
    baseline when the gradient norm grows with length). A one-row group has baseline 0 (as
    verl). With equal lengths it reduces to `GroupNormalised(center="mean")`."""

    def formula(self) -> str:
        return "r − Σ_G |τ|·r / Σ_G |τ|"

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        n_tok = b.mask.sum(-1)
        s, n, _ = group_moments(n_tok * b.reward, b.group, b.rollouts)
        w, _, _ = group_moments(n_tok, b.group, b.rollouts)
        base = torch.where(n > 1, s / w.clamp_min(1e-30), torch.zeros_like(s))
        return b.reward - base


@dataclass(frozen=True)
class BestOfGroup(Advantage):
    """Pass@k training (Chen et al. arXiv 2503.19595; verl ``grpo_passk``): only the best rollout
    of each prompt gets a signal, Â = (r_max − r_second)/(std_G r + eps) (std with Bessel's
    correction; ``scale="none"`` drops it, verl ``norm_adv_by_std_in_grpo=False``), every other
    row 0. Groups with one row get 0 (verl raises)."""

    def formula(self) -> str:
        gap = "r_max − r_2nd on argmax_G r"
        return f"({gap}) / std_G r" if self.scale == "std" else gap

    scale: str = "std"
    eps: float = 1e-6

    def __post_init__(self):
        if self.scale not in ("std", "none"):
            raise ValueError(f"BestOfGroup.scale must be 'std' or 'none', got {self.scale!r}")

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        adv = torch.zeros_like(b.reward)
        for g in torch.unique(b.group[b.rollouts]):
            idx = ((b.group == g) & b.rollouts).nonzero().squeeze(-1)
            if idx.numel() < 2:
                continue
            r = b.reward[idx]
            top, at = torch.topk(r, 2)
            a = top[0] - top[1]
            adv[idx[at[0]]] = a / (r.std() + self.eps) if self.scale == "std" else a
        return adv


@dataclass(frozen=True)
class ShareScaled(Advantage):
    """GPG (Group Policy Gradient, Chu et al. arXiv 2504.02546 Eq. 8; verl ``gpg``):
    Â_i = α·(r_i − mean_G r)/f_norm with α = B / #{rows with r ≠ 0} over the whole batch (all
    ranks), which rescales the gradient to the rows that carry reward. A one-row group has
    mean 0 (as verl). With α = f_norm = 1 it is `GroupNormalised(center="mean")` on groups of ≥ 2."""

    def formula(self) -> str:
        return f"(B / #(r≠0))·(r − mean_G r) / {self.f_norm:g}"

    f_norm: float = 1.0

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        m = b.rollouts.to(b.reward.dtype)
        counts = torch.stack([m.sum(), ((b.reward != 0).to(m.dtype) * m).sum()])
        counts = all_reduce(counts) if all_reduce else counts
        alpha = counts[0] / counts[1].clamp_min(1)
        s, n, _ = group_moments(b.reward, b.group, b.rollouts)
        mean = torch.where(n > 1, s / n.clamp_min(1), torch.zeros_like(s))
        return alpha * (b.reward - mean) / self.f_norm


@dataclass(frozen=True)
class OptimalTokenBaseline(Advantage):
    """Optimal token baseline (verl ``optimal_token_baseline``): Â_t = G_t − B_t with a baseline
    per prompt and per position, weighted by each rollout's accumulated score-norm proxy:

        w_t = 1 − 2π_θold(y_t) + Σ_v π_θold(v)²  (= ‖∇_z log π(y_t)‖² for logits z),
        W_t = Σ_{s≤t} w_s,   B_t = Σ_i G_{i,t} W_{i,t} / Σ_i W_{i,t}

    over the prompt's rollouts that reach position t (G_t the return: the outcome reward).
    ``zero_tail``: where one rollout is strictly the longest of its prompt, its baseline beyond
    the second longest is 0 (verl ``handle_zero_tail``). Needs ``Batch.sum_pi_squared``.
    ``leave_one_out``: B_t of row i from the other rows only — independent of row i's sample,
    so E[Â_t ∇log π(y_t)] sums to ∇J exactly; verl's B_t includes the row itself, which biases
    the update towards zero like the mean baseline's (G−1)/G (measured by enumeration in
    tests/test_estimators_exact.py). A one-row group has B = 0; with W ≡ const and without
    leave_one_out it is the mean baseline per position. verl adds
    eps = 1e-8 to every denominator (a relative change of 1e-8/ΣW, so equal rewards leave a
    1e-11 advantage); here a zero ΣW alone is guarded, so equal rewards give Â ≡ 0 exactly."""

    def formula(self) -> str:
        over = "G∖i" if self.leave_one_out else "G"
        return f"G_t − Σ_{over} G_t·W_t / Σ_{over} W_t,  W_t = Σ_{{s≤t}} (1 − 2π_s + Σ_v π²)"

    zero_tail: bool = True
    leave_one_out: bool = False
    reads_old = True

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        m = b.mask * b.rollouts[:, None]
        ret = _kl_reward(0.0, "k1", b).flip(-1).cumsum(-1).flip(-1)
        w = 1 - 2 * torch.exp(masked(b, b.logp_old)) + b.sum_pi_squared
        W = (w * m).cumsum(-1)
        _, inv = torch.unique(b.group, return_inverse=True)
        k = int(inv.max()) + 1
        own_num, own_den = ret * W * m, W * m
        num = torch.zeros(k, m.shape[1], dtype=m.dtype).index_add_(0, inv, own_num)[inv]
        den = torch.zeros(k, m.shape[1], dtype=m.dtype).index_add_(0, inv, own_den)[inv]
        if self.leave_one_out:
            num, den = num - own_num, den - own_den
        rows = torch.zeros(k, dtype=m.dtype).index_add_(0, inv, b.rollouts.to(m.dtype))
        base = num / torch.where(den > 0, den, torch.ones_like(den)) * (rows[inv] > 1)[:, None]
        if self.zero_tail:
            lengths = m.sum(-1)
            for g in range(k):
                idx = ((inv == g) & b.rollouts).nonzero().squeeze(-1)
                if idx.numel() < 2:
                    continue
                top = torch.topk(lengths[idx], 2).values
                if top[0] > top[1] and int((lengths[idx] == top[0]).sum()) == 1:
                    base[idx[lengths[idx] == top[0]], int(top[1]):] = 0.0
        return (ret - base) * m


@dataclass(frozen=True)
class GroupWhitened(KLInReward):
    """REINFORCE++ with a group baseline (Hu, arXiv 2501.03262 §3; verl
    ``reinforce_plus_plus_baseline``): the row's score s_i = Σ_t (r·1[last] − β·k(π_θold‖π_ref))_t
    (KL in the reward, β = kl_coef 0.001, k1), minus its prompt's mean score, then whitened over
    every rollout token of the whole batch (verl ``masked_whiten``, all ranks). A one-row group
    has mean 0. With β = 0 it is the whitened `GroupNormalised(center="mean")`."""

    def formula(self) -> str:
        kl = f" − {self.kl_coef:g}·Σ_t {self.kl_kind}(π_θold‖π_ref)" if self.kl_coef else ""
        return f"whiten_batch(r{kl} − mean_G)"

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        score = _kl_reward(self.kl_coef, self.kl_kind, b).sum(-1)
        s, n, _ = group_moments(score, b.group, b.rollouts)
        centred = score - torch.where(n > 1, s / n.clamp_min(1), torch.zeros_like(s))
        return whiten(centred[:, None] * b.mask, b.mask * b.rollouts[:, None], all_reduce)
