"""Parts of the methods TRL 1.16 ships beyond the paper's table (VESPO) and of three 2025 methods
beyond both peers (CHORD, PKPO, the entropy mask), each one slot of the five (see `parts`).

* `SequenceRatioTokenGrad` (denominator): value = the sequence ratio, gradient per token (VESPO).
* `GammaWeight` (mask): VESPO's smooth gamma weight φ(w) of the sequence ratio.
* `ChordPhi` (likelihood): CHORD's token weight φ = p(1−p) on the demonstration's NLL.
* `PassAtK` (advantage): PKPO's unbiased pass@k reward transformation.
* `EntropyMasked` (advantage wrapper): only the top-q highest-entropy tokens carry Â.
* `ChordSchedule` (gate): CHORD's scheduled SFT weight μ, (α, β) = (1 − μ, μ).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .batch import Batch, BatchError
from .parts import masked
from .slots import Advantage, Denominator, Gate, Likelihood, Mask

# ----------------------------------------------------------------------------- denominators


@dataclass(frozen=True)
class SequenceRatioTokenGrad(Denominator):
    """ρ_t = sg(w_i)·π_θ(y_t)/sg(π_θ(y_t)), w_i = Π_t π_θ(y_t)/π_θold(y_t) (``geometric``: the
    |τ_i|-th root, GSPO-token, arXiv 2507.18071 Eq. 11): the mask sees the sequence ratio w_i,
    the gradient is ∇log π_θ(y_t) per token. VESPO (arXiv 2602.10693; TRL 1.16
    ``loss_type="vespo"``: −φ(w)·Â·log π_θ, φ detached) is this with `GammaWeight`. At θ = θ_old
    it reduces to `parts.Current`."""

    geometric: bool = False

    def formula(self) -> str:
        w = "(Π_t π_θ/π_θold)^(1/|τ|)" if self.geometric else "Π_t π_θ/π_θold"
        return f"π_ref: value sg({w}), gradient ∇log π_θ per token"

    def __call__(self, b: Batch) -> Tensor:
        log_w = masked(b, b.logp - b.logp_old).detach().sum(-1, keepdim=True)
        if self.geometric:
            log_w = log_w / b.mask.sum(-1, keepdim=True).clamp_min(1)
        return torch.exp(masked(b, b.logp - b.logp.detach()) + log_w)

# ------------------------------------------------------------------------------------ masks


@dataclass(frozen=True)
class GammaWeight(Mask):
    """VESPO's gamma weight (arXiv 2602.10693; TRL 1.16 ``get_gamma_weights``): with w the
    sequence ratio (the denominator's value) and log w clamped to [log_w_min, log_w_max],
    φ(w) = exp(λ + k·log w − λ·w), normalised so φ(1) = 1; (k, λ) = (k_pos, lambda_pos) where
    Â ≥ 0, else (k_neg, lambda_neg). As a multiplier on ρ = w: M = sg(φ(w)/w), so the term's
    gradient is φ(w)·Â·∇log π_θ. Defaults: TRL's ``vespo_k_pos`` … ``vespo_lambda_neg`` and its
    clamp (log 1e-8, 20). Reduces to M ≡ 1 at w = 1."""

    k_pos: float = 2.0
    lambda_pos: float = 3.0
    k_neg: float = 3.0
    lambda_neg: float = 2.0
    log_w_min: float = math.log(1e-8)
    log_w_max: float = 20.0

    def formula(self) -> str:
        return (f"sg(φ(w))/w, φ(w) = e^λ·w^k·e^(−λw), (k, λ) = ({self.k_pos:g}, {self.lambda_pos:g}) "
                f"for Â ≥ 0, ({self.k_neg:g}, {self.lambda_neg:g}) else")

    def __call__(self, ratio: Tensor, adv: Tensor) -> Tensor:
        w = ratio.detach()
        log_w = torch.log(w).clamp(self.log_w_min, self.log_w_max)
        pos = adv >= 0
        k = torch.where(pos, torch.full_like(w, self.k_pos), torch.full_like(w, self.k_neg))
        lam = torch.where(pos, torch.full_like(w, self.lambda_pos), torch.full_like(w, self.lambda_neg)).clamp_min(1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w)).nan_to_num(0.0, 0.0, 0.0)
        return (phi / w).nan_to_num(0.0, 0.0, 0.0)

# ------------------------------------------------------------------------------- likelihood


@dataclass(frozen=True)
class ChordPhi(Likelihood):
    """CHORD-φ (Zhang et al., arXiv 2508.11408 §3.3): the demonstration's NLL with token weights
    φ = p(1−p), i.e. gradient −φ·∇log p = −(1−p)∇p. With π_ref ≡ 1 (`parts.Unit`, ρ = p) that is
    the likelihood L(p) = p − p²/2 (L'(p) = 1 − p). φ ≡ 1 is plain SFT (`parts.Current` with
    `parts.Plain`)."""

    def formula(self) -> str:
        return "∇[π_θ − π_θ²/2] = π_θ(1−π_θ)·∇log π_θ"

    def __call__(self, ratio: Tensor) -> Tensor:
        return ratio - 0.5 * ratio * ratio

# ------------------------------------------------------------------------------- advantages


def _max_at_k_weights(n: int, k: int) -> list:
    """c_j with Σ_j c_j r_(j) = mean over all k-subsets of max r (r_(1) ≤ … ≤ r_(n)):
    c_j = C(j−1, k−1)/C(n, k) (PKPO Eq. 5)."""
    return [math.comb(j - 1, k - 1) / math.comb(n, k) for j in range(1, n + 1)]


def _subset_max_weights(r: Tensor, k: int) -> Tensor:
    """r̃_i = (1/C(n,k)) Σ_{|S|=k, S∋i} max_{j∈S} r_j (PKPO §3): for sorted r (ascending, rank
    i), r̃_(i) = [C(i−1,k−1)·r_(i) + Σ_{j>i} C(j−2,k−2)·r_(j)] / C(n,k). Σ_i r̃_i ∇log π(y_i) is
    unbiased for ∇maxg@k = ∇E[max of k samples] (binary r: ∇pass@k)."""
    n = r.numel()
    order = torch.argsort(r, stable=True)
    s = r[order]
    total = math.comb(n, k)
    own = torch.tensor([math.comb(i - 1, k - 1) / total for i in range(1, n + 1)], dtype=r.dtype)
    above = torch.tensor([math.comb(j - 2, k - 2) / total if k >= 2 and j >= 2 else 0.0
                          for j in range(1, n + 1)], dtype=r.dtype)
    tail = (above * s).flip(0).cumsum(0).flip(0) - above * s       # Σ_{j>i} C(j−2,k−2)·r_(j)
    out = torch.empty_like(r)
    out[order] = own * s + tail
    return out


@dataclass(frozen=True)
class PassAtK(Advantage):
    """PKPO (Walder & Karkhanis, arXiv 2505.15201 §3–4): per group of n rollouts, the
    transformed reward r̃_i (`_subset_max_weights`; binary r: r̃_i = k/n if correct, else
    (k/n)·ρ(n−1, c, k−1)), minus a leave-one-out baseline b_i = (k/n)·m̂_{k'}(r_{−i}) — the
    unbiased max@k' estimate (k' = max(k−1, 1)) of the other n−1 rewards, which does not depend
    on y_i and so keeps the estimate unbiased (``baseline="none"``: b = 0). Â_i = n·(r̃_i − b_i),
    so with `parts.SeqMeanTokenSum` E ĝ = mean_x ∇pass@k(x) exactly. k = 1 gives RLOO.
    Groups smaller than k use k = n. With the baseline, rewards are first shifted by the group
    minimum (both terms shift alike), so equal rewards give Â = 0 exactly."""

    k: int = 4
    baseline: str = "loo"

    def __post_init__(self):
        if self.k < 1 or self.baseline not in ("loo", "none"):
            raise ValueError(f"PassAtK(k={self.k}, baseline={self.baseline!r}): k must be ≥ 1, "
                             "baseline 'loo' or 'none'")

    def formula(self) -> str:
        b = " − (k/n)·max@(k−1)(r_{−i})" if self.baseline == "loo" else ""
        return f"n·(r̃_i{b}), r̃ = PKPO pass@k transform (k={self.k})"

    def _one(self, r: Tensor) -> Tensor:
        n = r.numel()
        k = min(self.k, n)
        if self.baseline == "none":
            return n * _subset_max_weights(r, k)
        r = r - r.min()
        adv = _subset_max_weights(r, k)
        if n > 1:
            j = min(max(k - 1, 1), n - 1)
            c = torch.tensor(_max_at_k_weights(n - 1, j), dtype=r.dtype)
            others = torch.stack([torch.sort(torch.cat([r[:i], r[i + 1:]])).values for i in range(n)])
            adv = adv - (k / n) * (others * c).sum(-1)
        return n * adv

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        out = torch.zeros_like(b.reward)
        roll = b.rollouts
        for g in torch.unique(b.group[roll]).tolist():
            idx = (roll & (b.group == g)).nonzero()[:, 0]
            out[idx] = self._one(b.reward[idx])
        return out


def top_entropy(h: Tensor, on: Tensor, quantile: float, all_reduce=None) -> Tensor:
    """[B, T] 1.0 on the tokens (where ``on``) whose entropy is ≥ the (1 − quantile)-quantile of
    every such token of the step (all ranks with ``all_reduce``), as TRL's
    ``get_high_entropy_mask`` with linear interpolation keeps them: the top K = N − ⌈(1−q)(N−1)⌉
    tokens and their ties. The K-th largest value is found exactly by bisection on the bits of
    float64 entropies (63 summed counts, no gather); entropies below 0 count as 0."""
    total = lambda x: all_reduce(x) if all_reduce else x  # noqa: E731
    bits = (h.detach().double().clamp_min(0) + 0.0).view(torch.int64)
    live = on > 0
    n = int(total(live.sum().double()))
    if n == 0:
        return torch.zeros_like(h)
    keep = n - math.ceil((1 - quantile) * (n - 1) - 1e-12)
    lo, hi = 0, 0x7FF0000000000001                       # count(≥ lo) ≥ keep > count(≥ hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if int(total(((bits >= mid) & live).sum().double())) >= keep:
            lo = mid
        else:
            hi = mid
    return ((bits >= lo) & live).to(h.dtype)


@dataclass(frozen=True)
class EntropyMasked(Advantage):
    """Â_t·1[H_t ≥ τ_q]: only the top-``quantile`` highest-entropy rollout tokens of the step
    carry the advantage ("Beyond the 80/20 rule", Wang et al. arXiv 2506.01939 §4, q = 0.2; TRL
    1.16 ``top_entropy_quantile``), every other token's policy-gradient term is 0. H is the
    per-token entropy of π_θold (``Batch.entropy`` at planning), τ_q its (1 − q)-quantile over
    the step's rollout tokens on every rank (`top_entropy`), so micro-batching and data-parallel
    size never change which tokens move. Wraps any advantage; quantile = 1 reduces to ``base``."""

    base: Advantage
    quantile: float = 0.2

    def __post_init__(self):
        if not 0.0 <= self.quantile <= 1.0:
            raise ValueError(f"EntropyMasked.quantile must be in [0, 1], got {self.quantile}")

    def formula(self) -> str:
        return f"({self.base.formula()})·1[H ≥ top-{self.quantile:g} entropy quantile]"

    @property
    def reads_old(self) -> bool:
        return True          # needs π_θold's entropy before planning

    def returns(self, b: Batch, all_reduce=None):
        return self.base.returns(b, all_reduce)

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        if b.entropy is None:
            raise BatchError("Batch.entropy is required by EntropyMasked (π_θold's token entropy at planning)")
        adv = self.base(b, all_reduce)
        adv = adv[:, None].expand_as(b.logp) if adv.dim() == 1 else adv
        on = b.mask * b.rollouts[:, None].to(b.mask.dtype)
        return adv * top_entropy(b.entropy, on, self.quantile, all_reduce)


def with_entropy_mask(est, quantile: float):
    """``est`` with the advantage of its rollout component wrapped in `EntropyMasked`."""
    slots = ("advantage", "rl.advantage")
    return est.map_parts(lambda slot, p: EntropyMasked(p, quantile) if slot in slots else p)

# ------------------------------------------------------------------------------------ gates


@dataclass(frozen=True)
class ChordSchedule(Gate):
    """CHORD's global SFT weight μ (arXiv 2508.11408 §3.2, Eq. 5: L = (1−μ)·L_RL + μ·L_SFT), the
    same on every prompt: (α, β) = (1 − μ, μ). μ rises linearly from 0 to mu_peak over
    warmup_steps, then decays from mu_peak to mu_valley along a cosine over decay_steps, then
    stays at mu_valley. ``step`` is set each training step (`at_step`). With mu_peak = mu_valley
    = μ it is the constant mixture (μ = 0: the RL estimator; μ = 1: SFT)."""

    mu_peak: float = 0.9
    mu_valley: float = 0.05
    warmup_steps: int = 0
    decay_steps: int = 200
    step: int = 0

    @property
    def mu(self) -> float:
        if self.step < self.warmup_steps:
            return self.mu_peak * self.step / self.warmup_steps
        done = self.step - self.warmup_steps
        t = min(done / self.decay_steps, 1.0) if self.decay_steps > 0 else 1.0
        return self.mu_valley + (self.mu_peak - self.mu_valley) * 0.5 * (1 + math.cos(math.pi * t))

    def at_step(self, step: int) -> "ChordSchedule":
        return replace(self, step=step)

    def __call__(self, c: Tensor, n: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        mu = self.mu
        return torch.full_like(p, 1.0 - mu), torch.full_like(p, mu)


__all__ = ["SequenceRatioTokenGrad", "GammaWeight", "ChordPhi", "PassAtK", "EntropyMasked",
           "ChordSchedule", "top_entropy", "with_entropy_mask"]
