"""Trust regions beyond the ratio clip, as masks and penalties of the unified estimator.

Each is written ``M · Â · ∇ρ`` (mask M, detached) plus, where the method adds one, a penalty
term in the estimator's ``kl`` slot. The masks that need more than (ρ, Â) implement
`slots.Mask.on` (they read π_θold from the batch) or `slots.Mask.pick` (tokens chosen over the
whole step, once, in the plan — never per micro-batch). Defaults are verl 0.9.1's
(``verl/workers/config/actor.py``) unless the docstring says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .batch import Batch
from .parts import Clip, kl_estimate, masked
from .slots import Mask


def _needs_batch(part) -> Tensor:
    raise TypeError(f"{type(part).__name__} reads π_θold from the batch: call .on(b, ratio, adv)")


@dataclass(frozen=True)
class Divergence(Mask):
    """DPPO (Divergence PPO, arXiv 2602.04879; verl ``dppo_tv`` / ``dppo_kl``): a token may move
    while the divergence between π_θold and π_θ *at that token* stays within δ, in the direction
    its advantage pushes it, and its weight is the truncated, detached ratio:

        grad = 1_valid · min(ρ, c) · Â · ∇log π_θ        (M = 1_valid · min(ρ, c)/ρ)

    kind "tv": with p = π_θ(y_t), q = π_θold(y_t), valid = p − q ≤ δ_high if Â > 0 else
    p − q ≥ −δ_low (binary total variation |p − q|). kind "kl": the binary KL
    q·log(q/p) + (1−q)·log((1−q)/(1−p)) ≤ δ_high (Â > 0, or p ≤ q) / ≤ δ_low (Â ≤ 0, or p ≥ q).
    cap = c (verl ``clip_ratio_c``; its DPPO code falls back to 20, §5.4 of the paper: large).
    delta_low/high = verl ``clip_ratio_low/high`` (0.15 TV, 0.05 KL in verl's DPPO recipe).
    With δ → ∞ and c → ∞ it reduces to `NoClip` (REINFORCE with the ratio)."""

    def formula(self) -> str:
        return f"1[D_{self.kind}(π_θold‖π_θ) ≤ ({self.delta_low:g}, {self.delta_high:g})] · min(ρ, {self.cap:g})/ρ"

    kind: str = "tv"
    delta_low: float = 0.15
    delta_high: float = 0.15
    cap: float = 20.0

    def __post_init__(self):
        if self.kind not in ("tv", "kl"):
            raise ValueError(f"Divergence.kind must be 'tv' or 'kl', got {self.kind!r}")

    def __call__(self, ratio: Tensor, adv: Tensor) -> Tensor:
        return _needs_batch(self)

    def on(self, b: Batch, ratio: Tensor, adv: Tensor, picked: Optional[Tensor] = None) -> Tensor:
        lp, lq = masked(b, b.logp.detach()), masked(b, b.logp_old)
        p, q = lp.exp(), lq.exp()
        if self.kind == "tv":
            up, down = p - q <= self.delta_high, p - q >= -self.delta_low
        else:
            d = q * (lq - lp) + (1 - q) * torch.log((1.0 - q + 1e-8) / (1.0 - p + 1e-8))
            up, down = (d <= self.delta_high) | (p <= q), (d <= self.delta_low) | (p >= q)
        r = ratio.detach()
        return torch.where(adv > 0, up, down).to(r.dtype) * r.clamp(max=self.cap) / r


@dataclass(frozen=True)
class SoftGate(Mask):
    """SAPO (Soft Adaptive Policy Optimization, arXiv 2511.20347 Eq. 5–6; verl ``sapo``): the
    hard clip replaced by a smooth gate f(ρ) = σ(τ(ρ − 1))·4/τ of the ratio, τ = tau_pos when
    Â > 0 else tau_neg (verl ``tau_pos`` = 1.0, ``tau_neg`` = 1.05). The loss −f(ρ)·Â has
    gradient −f'(ρ)·Â·∇ρ with f'(ρ) = 4σ(1 − σ), so M = 4σ(τ(ρ−1))(1 − σ(τ(ρ−1))). At ρ = 1,
    M = 1: on-policy it reduces to `NoClip`; far from 1 the weight decays smoothly to 0."""

    def formula(self) -> str:
        return f"4σ(τ(ρ−1))(1−σ(τ(ρ−1))), τ = {self.tau_pos:g} (Â>0) / {self.tau_neg:g}"

    tau_pos: float = 1.0
    tau_neg: float = 1.05

    def __call__(self, ratio: Tensor, adv: Tensor) -> Tensor:
        tau = torch.where(adv > 0, torch.full_like(adv, self.tau_pos), torch.full_like(adv, self.tau_neg))
        s = torch.sigmoid(tau * (ratio.detach() - 1.0))
        return 4.0 * s * (1.0 - s)


@dataclass(frozen=True)
class GeometricClip(Mask):
    """GMPO (Geometric-Mean Policy Optimization, arXiv 2507.20673 Eq. 5; verl ``geo_mean``): each
    sequence is weighted by the geometric mean of its token ratios, each log-ratio clipped at
    token level on the side its advantage pushes (x = log ρ_t; Â > 0: min(x, ε_high); Â < 0:
    max(x, −ε_low)):

        L_i = −Â_i · s̃_i,   s̃_i = exp((1/|τ_i|) Σ_t x̃_t),
        grad = (1/|τ_i|) Σ_t s̃_i · 1[x_t unclipped] · Â_i · ∇log π_θ(y_t)

    With the per-token denominator `Old` (ρ_t) this is M_t = s̃_i · 1[unclipped]/ρ_t under a
    seq-mean-token-mean reduction. eps_low/high: the clip range e^{±0.4} of the paper (verl
    reads ``clip_ratio_low/high``). With |τ| = 1 it reduces to `Clip` on log ρ."""

    def formula(self) -> str:
        return f"exp(mean_t clip(log ρ, −{self.eps_low:g}, {self.eps_high:g})) · 1_unclipped/ρ_t"

    eps_low: float = 0.4
    eps_high: float = 0.4

    def __call__(self, ratio: Tensor, adv: Tensor) -> Tensor:
        return _needs_batch(self)

    def on(self, b: Batch, ratio: Tensor, adv: Tensor, picked: Optional[Tensor] = None) -> Tensor:
        x = masked(b, b.logp.detach() - b.logp_old)
        up, down = adv > 0, adv < 0
        kept = torch.where(up, x <= self.eps_high, down & (x >= -self.eps_low))
        clipped = torch.where(up, x.clamp(max=self.eps_high), torch.where(down, x.clamp(min=-self.eps_low), 0 * x))
        n = b.mask.sum(-1).clamp_min(1)
        s = torch.exp((clipped * b.mask).sum(-1) / n)
        return s[:, None] * kept.to(x.dtype) / ratio.detach()


# --------------------------------------------------------------- tokens chosen by covariance


def top_k(score: Tensor, cand: Tensor, k: Tensor, all_reduce=None, rounds: int = 200) -> Tensor:
    """[B,T] bool: the ``k`` candidates with the largest ``score`` over every rank (all of them
    when there are at most k). The k-th value is found by bisection on a threshold, each round
    one summed count, so ranks holding different rows agree without gathering scores."""
    red = all_reduce or (lambda t: t)
    n = red(cand.sum().to(score.dtype))
    if n <= k:
        return cand
    s = torch.where(cand, score, torch.zeros_like(score))
    hi = red(s.abs().sum()) + 1.0
    lo = -hi
    for _ in range(rounds):
        mid = (lo + hi) / 2
        if mid == lo or mid == hi:
            break
        count = red((cand & (score >= mid)).sum().to(score.dtype))
        if count >= k:
            lo = mid
            if count == k:  # exactly the k largest (ranks see the same count: they stop together)
                break
        else:
            hi = mid
    return cand & (score >= lo)


def covariance(b: Batch, adv: Tensor, all_reduce=None) -> tuple[Tensor, Tensor]:
    """Per token, (Â − mean Â)(log π − mean log π) with both means over every response token
    of the step (arXiv 2505.22617 Eq. 11: the covariance that drives entropy change), and the
    step's response-token count N."""
    m, lp = b.mask, masked(b, b.logp.detach())
    sums = torch.stack([(adv * m).sum(), (lp * m).sum(), m.sum()])
    sums = all_reduce(sums) if all_reduce else sums
    n = sums[2].clamp_min(1)
    return (adv - sums[0] / n) * (lp - sums[1] / n), sums[2]


@dataclass(frozen=True)
class CovarianceClip(Mask):
    """Clip-Cov (arXiv 2505.22617 §4, Eq. 12; verl ``clip_cov``): the PPO clip, and in addition
    max(1, ⌊r·N⌋) tokens whose centred covariance Cov_t = (Â − Ā)(log π − mean log π) lies in
    (lower, upper) and that the clip leaves free are detached (M = 0), chosen once per step
    over the whole batch. verl chooses them at random among the candidates of each micro-batch
    (``torch.randperm``); here the largest covariances are taken, so the choice never depends
    on how the step is split — both are the same set when there are at most ⌊r·N⌋ candidates.
    ratio = r (verl ``clip_cov_ratio`` 0.0002), lower/upper (``clip_cov_lb/ub`` 1, 5), eps_* as
    `Clip`. With ratio → 0 (no token picked) it reduces to `Clip`."""

    def formula(self) -> str:
        return (f"1_clip(ε_low={self.eps_low:g}, ε_high={self.eps_high:g}) · "
                f"(1 − 1[top {self.ratio:g}·N of Cov ∈ ({self.lower:g}, {self.upper:g})])")

    eps_low: float = 0.2
    eps_high: float = 0.2
    ratio: float = 0.0002
    lower: float = 1.0
    upper: float = 5.0
    reads_old = True

    def __call__(self, ratio: Tensor, adv: Tensor) -> Tensor:
        return _needs_batch(self)

    def pick(self, b: Batch, adv: Tensor, all_reduce=None) -> Tensor:
        cov, n = covariance(b, adv, all_reduce)
        rho = torch.exp(masked(b, b.logp.detach() - b.logp_old))
        free = Clip(self.eps_low, self.eps_high)(rho, adv) > 0
        cand = (b.mask > 0) & free & (cov > self.lower) & (cov < self.upper)
        k = torch.clamp((self.ratio * n).floor(), min=1)
        return top_k(cov, cand, k, all_reduce).to(b.mask.dtype)

    def on(self, b: Batch, ratio: Tensor, adv: Tensor, picked: Optional[Tensor] = None) -> Tensor:
        return Clip(self.eps_low, self.eps_high)(ratio, adv) * (1 - picked)


@dataclass(frozen=True)
class CovarianceTop(Mask):
    """KL-Cov's token choice (arXiv 2505.22617 §4, Eq. 13; verl ``kl_cov``): the max(1, ⌊r·N⌋)
    tokens with the largest centred covariance (see `covariance`) over the whole step; M ≡ 1
    (no clip). The chosen tokens get `PickedPenalty`. ratio = r (verl ``kl_cov_ratio`` 0.0002)."""

    def formula(self) -> str:
        return f"1 (top {self.ratio:g}·N tokens by Cov picked)"

    ratio: float = 0.0002
    reads_old = True

    def __call__(self, ratio: Tensor, adv: Tensor) -> Tensor:
        return torch.ones_like(ratio)

    def pick(self, b: Batch, adv: Tensor, all_reduce=None) -> Tensor:
        cov, n = covariance(b, adv, all_reduce)
        k = torch.clamp((self.ratio * n).floor(), min=1)
        return top_k(cov, b.mask > 0, k, all_reduce).to(b.mask.dtype)


# ------------------------------------------------------------------------------- penalties


@dataclass(frozen=True)
class PickedPenalty:
    """KL-Cov's penalty (arXiv 2505.22617 Eq. 13; verl ``kl_cov``): coef·|log π_θ − log π_θold|
    on the tokens the mask picked (`CovarianceTop`), 0 elsewhere. coef = verl ``ppo_kl_coef``
    (0.1). Its gradient is 0 at θ = θ_old (|x| at 0): it acts from the second update of a step."""

    coef: float = 0.1
    needs = ()

    def __call__(self, b: Batch, picked: Optional[Tensor] = None) -> Tensor:
        return masked(b, b.logp - b.logp_old).abs() * picked


@dataclass(frozen=True)
class ProximalPenalty:
    """coef · k(log π_θ − log π_θold) per token: a penalty toward the sampling policy. With
    kind "k2" (½d²) it is DRO's quadratic log-ratio penalty (Richemond et al. arXiv 2405.19107;
    verl ``dro``: −(Â·log π − ½β(log π − log π_old)²)), coef = β (verl ``dro_beta``, which has no
    default and must be > 0). Its gradient is 0 at θ = θ_old."""

    coef: float = 0.1
    kind: str = "k2"
    needs = ()

    def __post_init__(self):
        if self.kind not in ("k1", "k2", "k3"):
            raise ValueError(f"ProximalPenalty.kind must be 'k1', 'k2' or 'k3', got {self.kind!r}")
        if self.coef <= 0:
            raise ValueError(f"ProximalPenalty.coef (DRO's β) must be > 0, got {self.coef}")

    def __call__(self, b: Batch, picked: Optional[Tensor] = None) -> Tensor:
        return kl_estimate(self.kind, masked(b, b.logp - b.logp_old))
