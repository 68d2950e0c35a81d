"""The five parts of the Unified Policy Gradient Estimator (arXiv 2509.04419, Eq. 6).

    grad_uni = 1_stable · (1/π_ref) · Â · ∇π_θ            (summed over tokens by a *reduction*)

Every per-token term is written as ``M · Â · L(ρ)`` with ρ = π_θ/π_ref (π_ref detached), whose
gradient is ``M · Â · L'(ρ) · ρ · ∇log π_θ = M · Â · L'(ρ) · ∇π_θ / π_ref``:

* **denominator** gives ρ (differentiable) — the choice of π_ref;
* **mask** gives the detached multiplier M = 1_stable (0/1, or a clipped weight for CISPO);
* **advantage** gives Â per row ``[B]`` or per token ``[B, T]`` (detached);
* **likelihood** gives L (identity for ∇π_θ; LUFFY's f(π)=π/(π+γ) for policy shaping);
* **reduction** gives the row weights and the once-per-step normaliser Z.

All parts are frozen dataclasses: their fields are the hyper-parameters and can be read back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .batch import Batch
from .slots import CONSTANT, ROWS, TOKENS, Advantage, Denominator, Gate, Likelihood, Mask, Reduction


def masked(b: Batch, x: Tensor) -> Tensor:
    """``x`` on response tokens, 0 on padding: applied to every log-ratio *before* ``exp`` so
    padding never overflows (``exp(±1e4)`` then ``inf · 0`` = NaN in the loss or its gradient).
    verl clamps the log-ratio to ±20 instead; here real tokens are left exact."""
    return torch.where(b.mask > 0, x, torch.zeros_like(x))

# ----------------------------------------------------------------------------- denominators


@dataclass(frozen=True)
class Current(Denominator):
    """π_ref = π_θ (SFT, REINFORCE): ρ = exp(log π_θ − sg(log π_θ)) ≡ 1, ∇ρ = ∇log π_θ.

    Paper Table 1 rows SFT / REINFORCE. Reduces to the plain score-function gradient.
    Every denominator takes its log-ratio through `masked` (0 on padding) before ``exp``."""

    def formula(self) -> str:
        return "π_ref = π_θ"

    def __call__(self, b: Batch) -> Tensor:
        return torch.exp(masked(b, b.logp - b.logp.detach()))


@dataclass(frozen=True)
class Old(Denominator):
    """π_ref = π_θold (PPO, GRPO, DAPO, CISPO): ρ_t = π_θ(y_t|s_t)/π_θold(y_t|s_t).

    Paper Eq. 16/18. At θ = θ_old it reduces to `Current` (ρ ≡ 1, same gradient)."""

    def formula(self) -> str:
        return "π_ref = π_θold"

    def __call__(self, b: Batch) -> Tensor:
        return torch.exp(masked(b, b.logp - b.logp_old))


@dataclass(frozen=True)
class Unit(Denominator):
    """π_ref ≡ 1 (LUFFY / SRFT offline rows): ρ_t = π_θ(y_t|s_t); gradient Â·∇π_θ (Eq. 19–20).

    Biased unless the offline data covers the rollout space uniformly (paper §2.3)."""

    def formula(self) -> str:
        return "π_ref ≡ 1"

    def __call__(self, b: Batch) -> Tensor:
        return torch.exp(masked(b, b.logp))


@dataclass(frozen=True)
class SequenceGeometric(Denominator):
    """GSPO (arXiv 2507.18071): π_ref = π_θ·(π_θold/π_θ)^{1/|τ|}, so every token of row i gets
    the sequence ratio s_i = exp((1/|τ_i|) Σ_t (log π_θ − log π_θold)).

    With a seq-mean-token-mean reduction the surrogate is (1/N) Σ_i s_i Â_i. For |τ| = 1 it
    reduces to `Old`."""

    def formula(self) -> str:
        return "π_ref = π_θ·(π_θold/π_θ)^(1/|τ|)"

    def __call__(self, b: Batch) -> Tensor:
        n = b.mask.sum(-1).clamp_min(1)
        s = torch.exp(masked(b, b.logp - b.logp_old).sum(-1) / n)
        return s[:, None].expand_as(b.logp)


@dataclass(frozen=True)
class SequenceRatio(Denominator):
    """Sequence-level importance sampling: every token carries the whole sequence ratio
    ρ_seq = Π_t π_θ(y_t|s_t)/π_θold(y_t|s_t) = exp(Σ_t (log π_θ − log π_θold)).

    With `SeqMeanTokenMean` the surrogate is (1/N) Σ_i ρ_seq,i Â_i, whose gradient is
    (1/N) Σ_i ρ_seq,i Â_i ∇log π_θ(y_i): unbiased for ∇J(θ) with y ∼ π_θold (Zheng et al.
    arXiv 2512.01374). PPO's per-token ratio is its first-order approximation. At θ = θ_old it
    reduces to `Current`."""

    def formula(self) -> str:
        return "π_ref = π_θold(τ) (whole-sequence ratio)"

    def __call__(self, b: Batch) -> Tensor:
        s = torch.exp(masked(b, b.logp - b.logp_old).sum(-1))
        return s[:, None].expand_as(b.logp)


TOKEN, SEQUENCE = "token", "sequence"      # RolloutIS.level: one ratio per token / per row
TRUNCATE, MASK = "truncate", "mask"        # RolloutIS.bound: clip into [floor, cap] / zero outside


def _token_ratio(d: Tensor, mask: Tensor) -> Tensor:
    return d


def _sequence_ratio(d: Tensor, mask: Tensor) -> Tensor:
    return d.sum(-1, keepdim=True).expand_as(d)


def _truncate(w: Tensor, floor: float, cap: float) -> Tensor:
    return w.clamp(min=floor, max=cap)


def _mask_outside(w: Tensor, floor: float, cap: float) -> Tensor:
    return torch.where((w >= floor) & (w <= cap), w, torch.zeros_like(w))


LEVELS = {TOKEN: _token_ratio, SEQUENCE: _sequence_ratio}
BOUNDS = {TRUNCATE: _truncate, MASK: _mask_outside}


@dataclass(frozen=True)
class RolloutIS(Denominator):
    """Rollout-correction importance sampling (rollout engine ≠ trainer): the mask and the
    likelihood see ρ_base (e.g. π_θ/π_θold); the detached weight w multiplies the term *after*
    them, as TRL's ``GRPOTrainer`` does (−min(ρÂ, clip(ρ)Â)·w): the clip acts on ρ alone.

        r_t = π_θold(y_t)/π_behavior(y_t)                 level "token"
        r_t = Π_s π_θold(y_s)/π_behavior(y_s) (per row)   level "sequence"
        w   = clip(r, floor, cap)                         bound "truncate" (TIS; Ionides 2008,
                                                          Yao et al. 2025)
        w   = r·1[floor ≤ r ≤ cap]                        bound "mask" (MIS; IcePop,
                                                          arXiv 2510.18855, is floor=0.5, cap=5)

    TRL 1.16 ``vllm_importance_sampling_mode`` ↔ (level, bound) one to one: token_truncate,
    token_mask, sequence_truncate, sequence_mask, with cap = ``vllm_importance_sampling_clip_max``
    and floor = ``vllm_importance_sampling_clip_min`` (None ↔ 0). With cap = ∞ and floor = 0
    every mode is plain IS (token or sequence); with π_behavior = π_θold it is ``base``."""

    def formula(self) -> str:
        r = "Π_t π_θold/π_behavior" if self.level == SEQUENCE else "π_θold/π_behavior"
        op = "clip" if self.bound == TRUNCATE else "mask"
        return f"{self.base.formula()} · {op}({r}, [{self.floor:g}, {self.cap:g}])"

    base: Denominator = Old()
    cap: float = 3.0      # C_max: TRL 1.16's vllm_importance_sampling_clip_max default
    floor: float = 0.0    # C_min: TRL's vllm_importance_sampling_clip_min=None
    level: str = TOKEN
    bound: str = TRUNCATE

    def __post_init__(self):
        if self.level not in LEVELS or self.bound not in BOUNDS:
            raise ValueError(f"{type(self).__name__}(level={self.level!r}, bound={self.bound!r}): level must be "
                             f"one of {sorted(LEVELS)}, bound one of {sorted(BOUNDS)}")
        if not self.floor < self.cap:
            raise ValueError(f"{type(self).__name__}: floor {self.floor} must be below cap {self.cap}")

    def __call__(self, b: Batch) -> Tensor:
        return self.base(b)

    def raw(self, b: Batch) -> Tensor:
        """[B, T] the unbounded ratio r (every token of a row carries its row's at level "sequence")."""
        d = masked(b, b.logp_old - b.logp_behavior).detach()
        return torch.exp(LEVELS[self.level](d, b.mask))

    def weight(self, b: Batch) -> Tensor:
        w = BOUNDS[self.bound](self.raw(b), self.floor, self.cap)
        inner = self.base.weight(b)
        return w if inner is None else w * inner

    def summary(self, b: Batch) -> Tensor:
        """[Σw, Σw², tokens, tokens with w changed (clipped or masked), max w] over the rollout
        tokens of ``b``: the sums behind the effective sample size (Σw)²/(n·Σw²), the share
        corrected and the largest weight (`RolloutIS` statistics in the run records)."""
        m = b.mask * b.rollouts[:, None].to(b.mask.dtype)
        r = self.raw(b)
        w = BOUNDS[self.bound](r, self.floor, self.cap)
        changed = ((w != r) & (m > 0)).to(m.dtype)
        top = (w * m).max() if m.numel() else m.sum()
        return torch.stack([(w * m).sum(), (w * w * m).sum(), m.sum(), changed.sum(), top]).detach()


@dataclass(frozen=True)
class TruncatedIS(RolloutIS):
    """Token-level truncated IS (TIS): `RolloutIS` with level "token", bound "truncate", weight
    w = min(π_θold/π_behavior, cap) (TRL ``vllm_importance_sampling_mode="token_truncate"``).
    Corrects rows sampled by an engine (e.g. vLLM) whose log-probs differ from the trainer's.
    With cap ≥ max ratio it is plain token IS; with π_behavior = π_θold it is `base`."""

    level: str = field(default=TOKEN, init=False, repr=False)
    bound: str = field(default=TRUNCATE, init=False, repr=False)


# ``--rollout-correction`` name → the part (cap/floor: --tis-cap/--tis-floor, but IcePop's own).
# The first four are TRL 1.16's ``vllm_importance_sampling_mode`` values, one to one.
ROLLOUT_CORRECTIONS = {
    "token_truncate": TruncatedIS(),                                 # TIS
    "token_mask": RolloutIS(level=TOKEN, bound=MASK),                # MIS
    "sequence_truncate": RolloutIS(level=SEQUENCE, bound=TRUNCATE),  # sequence-level TIS
    "sequence_mask": RolloutIS(level=SEQUENCE, bound=MASK),          # sequence-level MIS
    "icepop": RolloutIS(level=TOKEN, bound=MASK, floor=0.5, cap=5.0),  # IcePop arXiv 2510.18855
}
FIXED_BOUNDS = ("icepop",)   # corrections whose bounds are the method's, not --tis-cap/--tis-floor


# ---------------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class NoClip(Mask):
    """1_stable ≡ 1 (SFT, REINFORCE, offline rows, the official HPT run)."""

    def formula(self) -> str:
        return "1"

    def __call__(self, ratio: Tensor, adv: Tensor) -> Tensor:
        return torch.ones_like(ratio)


@dataclass(frozen=True)
class Clip(Mask):
    """PPO clipping as a mask (paper App. B.3, Eq. 21): the gradient of
    min(ρÂ, clip(ρ, 1−ε_low, 1+ε_high)Â) is 1_stable·Â·∇ρ with 1_stable = 0 where
    (Â > 0 and ρ > 1+ε_high) or (Â < 0 and ρ < 1−ε_low).

    ε_low = ε_high = 0.2 is PPO; (0.2, 0.28) is DAPO's clip-higher; `dual` = c > 1 adds the
    dual clip (Ye et al. 2020): 1_stable = 0 also where Â < 0 and ρ > c. Applied to a sequence
    ratio (`SequenceGeometric`) it is GSPO's sequence clip."""

    def formula(self) -> str:
        return f"1_clip(ε_low={self.eps_low:g}, ε_high={self.eps_high:g})" + (f" · 1_dual(c={self.dual:g})" if self.dual else "")

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual: Optional[float] = None

    def __call__(self, ratio: Tensor, adv: Tensor) -> Tensor:
        r = ratio.detach()
        off = ((adv > 0) & (r > 1 + self.eps_high)) | ((adv < 0) & (r < 1 - self.eps_low))
        if self.dual is not None:
            off = off | ((adv < 0) & (r > self.dual))
        return (~off).to(ratio.dtype)


@dataclass(frozen=True)
class CISClip(Mask):
    """CISPO (MiniMax-M1, arXiv 2506.13585): the IS weight is clipped and stop-gradiented,
    sg(clip(ρ, 1−ε_low, 1+ε_high))·Â·∇log π_θ, so no token's gradient is dropped.

    As a multiplier on ρ: M = sg(clip(ρ)/ρ). With ρ inside the band it reduces to `NoClip`."""

    def formula(self) -> str:
        return f"sg(clip(ρ, 1−{self.eps_low}, 1+{self.eps_high}))/ρ"

    eps_low: float = 1.0
    eps_high: float = 0.28

    def __call__(self, ratio: Tensor, adv: Tensor) -> Tensor:
        r = ratio.detach()
        return (r.clamp(1 - self.eps_low, 1 + self.eps_high) / r).nan_to_num(0.0)


# ------------------------------------------------------------------------------ likelihood


@dataclass(frozen=True)
class Plain(Likelihood):
    """L(ρ) = ρ: the differentiated quantity is ∇π_θ/π_ref itself (every Table 1 row but LUFFY)."""

    def formula(self) -> str:
        return "∇π_θ"

    def __call__(self, ratio: Tensor) -> Tensor:
        return ratio


@dataclass(frozen=True)
class Shaped(Likelihood):
    """LUFFY policy shaping (arXiv 2504.14945): L(π) = π/(π+γ), so the token weight becomes
    γ/(π+γ)²·∇π — larger for low-probability demonstration tokens. Official code option
    ``off_policy_reshape="p_div_p_0.1"`` (γ = 0.1). As γ → ∞ (rescaled) it reduces to `Plain`."""

    def formula(self) -> str:
        return f"∇[π_θ/(π_θ+{self.gamma})]"

    gamma: float = 0.1

    def __call__(self, ratio: Tensor) -> Tensor:
        return ratio / (ratio + self.gamma)


# ------------------------------------------------------------------------------ advantages


def group_moments(x: Tensor, group: Tensor, member: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: (sum, count, sum of squares) of ``x`` over the *member* rows of its group."""
    _, inv = torch.unique(group, return_inverse=True)
    m = member.to(x.dtype)
    k = int(inv.max()) + 1 if inv.numel() else 0
    s = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, inv, x * m)
    n = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, inv, m)
    q = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, inv, x * x * m)
    return s[inv], n[inv], q[inv]


@dataclass(frozen=True)
class Ones(Advantage):
    """Â ≡ 1 (SFT, paper Table 1)."""

    def formula(self) -> str:
        return "1"

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        return torch.ones_like(b.reward)


@dataclass(frozen=True)
class Reward(Advantage):
    """Â = scale·(r − baseline) (REINFORCE, Williams 1992). Unbiased for ∇J: E ĝ = scale·∇J.
    Ahmadian et al.'s ±1 for binary r is ``Reward(baseline=0.5, scale=2)``."""

    def formula(self) -> str:
        return "r" if (self.baseline, self.scale) == (0.0, 1.0) else f"{self.scale}·(r − {self.baseline})"

    baseline: float = 0.0
    scale: float = 1.0

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        return self.scale * (b.reward - self.baseline)


@dataclass(frozen=True)
class GroupNormalised(Advantage):
    """Group-relative advantages over the rows sharing a prompt.

    center "mean": Â_i = r_i − mean_j r_j  (Dr. GRPO; = ((G−1)/G)(r_i − mean_{j≠i} r_j))
    center "loo":  Â_i = r_i − mean_{j≠i} r_j  (RLOO, Kool et al. 2019; unbiased)
    scale "std":   divided by (std_j r_j + eps), std with Bessel's correction as in verl/TRL
                   (GRPO, Eq. 5); E ĝ_x = w(p,G)·∇p_x.
    with_demos:    demonstration rows count as group members (LUFFY/SRFT, G_on ∪ G_off).
    A group with one member gets Â = 0. Non-member rows get their group's statistic too."""

    def formula(self) -> str:
        centred = "r − mean_{j≠i} r_j" if self.center == "loo" else "r − mean_G r"
        scaled = f"({centred}) / std_G r" if self.scale == "std" else centred
        return scaled + (" over G_on ∪ G_off" if self.with_demos else "")

    center: str = "mean"
    scale: str = "none"
    eps: float = 1e-6
    with_demos: bool = False

    def __post_init__(self):
        if self.center not in ("mean", "loo") or self.scale not in ("none", "std"):
            raise ValueError(f"GroupNormalised(center={self.center!r}, scale={self.scale!r}): "
                             "center must be 'mean' or 'loo', scale 'none' or 'std'")

    def from_rewards(self, reward: Tensor, group: Tensor, member: Tensor) -> Tensor:
        s, n, q = group_moments(reward, group, member)
        mean = s / n.clamp_min(1)
        if self.center == "mean":
            adv = reward - mean
        else:
            adv = torch.where(n > 1, (n * reward - s) / (n - 1).clamp_min(1), torch.zeros_like(reward))
        if self.scale == "std":
            var = ((q - n * mean * mean) / (n - 1).clamp_min(1)).clamp_min(0)
            adv = adv / (var.sqrt() + self.eps)
        return torch.where(n > 1, adv, torch.zeros_like(adv))

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        member = torch.ones_like(b.is_demo) if self.with_demos else b.rollouts
        return self.from_rewards(b.reward, b.group, member)


def last_token(mask: Tensor) -> Tensor:
    """[B, T] 1.0 on each row's last response token (where the sequence reward sits)."""
    return ((mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & (mask > 0)).to(mask.dtype)


def whiten(x: Tensor, m: Tensor, all_reduce=None) -> Tensor:
    """(x − mean)/sqrt(var + 1e-8) over the tokens where m = 1 (of every rank with
    ``all_reduce``), Bessel-corrected variance, 0 elsewhere: verl's ``masked_whiten``."""
    stats = torch.stack([(x * m).sum(), (x ** 2 * m).sum(), m.sum()])
    s, q, n = all_reduce(stats) if all_reduce else stats
    mean = s / n.clamp_min(1)
    var = ((q - n * mean ** 2) / (n - 1).clamp_min(1)).clamp_min(0)
    return (x - mean) * torch.rsqrt(var + 1e-8) * m


def discounted_reverse_cumsum(x: Tensor, c: float, chunk: int = 256) -> Tensor:
    """y_t = Σ_{s≥t} c^{s−t} x_s along the last dim, vectorised: a [chunk, chunk] discount matrix
    within each chunk, and the carried y at the next chunk's start between chunks (c = 1: a
    reversed cumulative sum)."""
    if c == 1.0:
        return x.flip(-1).cumsum(-1).flip(-1)
    T = x.shape[-1]
    e = torch.arange(chunk, device=x.device)
    e = (e[None, :] - e[:, None]).to(x.dtype)                                # s − t
    K = torch.where(e >= 0, torch.full_like(e, c) ** e.clamp_min(0), torch.zeros_like(e))
    out, carry = torch.empty_like(x), torch.zeros_like(x[..., 0])
    for start in reversed(range(0, T, chunk)):
        n = min(chunk, T - start)
        tail = torch.full((n,), c, dtype=x.dtype, device=x.device) ** torch.arange(n, 0, -1, device=x.device)
        out[..., start:start + n] = x[..., start:start + n] @ K[:n, :n].T + carry[..., None] * tail
        carry = out[..., start]
    return out


@dataclass(frozen=True)
class GAE(Advantage):
    """Generalized Advantage Estimation (Schulman et al. 2015, arXiv 1506.02438), as PPO uses:
    δ_t = r_t + γV_{t+1} − V_t, Â_t = Σ_l (γλ)^l δ_{t+l}, the sequence reward on its last token,
    V = 0 beyond the response. ``whiten`` standardises Â over the batch's tokens (verl's
    ``masked_whiten``). Needs ``Batch.values``. With λ = 1, γ = 1, V ≡ 0 it reduces to Â_t = r."""

    def formula(self) -> str:
        return f"GAE(γ={self.gamma}, λ={self.lam})" + (", whitened" if self.whiten else "")

    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True

    def advantages_and_returns(self, b: Batch) -> tuple[Tensor, Tensor]:
        """(Â before whitening, returns Â + V), both [B, T]."""
        m = b.mask
        v = b.values.detach() * m
        delta = b.reward[:, None] * last_token(m) + self.gamma * F.pad(v[:, 1:], (0, 1)) - v
        adv = discounted_reverse_cumsum(delta, self.gamma * self.lam)
        return adv * m, (adv + v) * m

    def returns(self, b: Batch, all_reduce=None) -> Tensor:
        """The critic's targets Â_t + V_t (before whitening)."""
        return self.advantages_and_returns(b)[1]

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        adv = self.advantages_and_returns(b)[0]
        return whiten(adv, b.mask, all_reduce) if self.whiten else adv


@dataclass(frozen=True)
class KLInReward(Advantage):
    """The KL-in-reward fields of an advantage (verl ``use_kl_in_reward``): β = ``kl_coef`` and
    the estimator ``kl_kind`` of KL(π_θold‖π_ref) subtracted from the token reward; the plan reads
    π_θold when β ≠ 0."""

    kl_coef: float = 0.001
    kl_kind: str = "k1"

    def __post_init__(self):
        KLPenalty(self.kl_coef, self.kl_kind)   # validates the kind

    @property
    def reads_old(self) -> bool:
        return bool(self.kl_coef)


@dataclass(frozen=True)
class WhitenedReturns(KLInReward):
    """REINFORCE++ (Hu, arXiv 2501.03262; verl 0.9.1 ``compute_reinforce_plus_plus_outcome_advantage``
    after ``apply_kl_penalty``): per-token reward r_t = r·1[t = last] − β·k(log π_θold − log π_ref)_t
    (KL in the reward), returns G_t = Σ_{s≥t} γ^{s−t} r_s, and Â = (G − mean)/std over every
    rollout token of the whole (global) batch (verl's ``masked_whiten``).

    kl_coef = β (verl ``algorithm.kl_ctrl.kl_coef``, default 0.001), kl_kind the estimator k1/k2/k3
    (verl ``kl_penalty="kl"`` is k1), gamma = γ. Needs ``Batch.logp_ref`` when β ≠ 0 (the preset
    declares it; the part alone treats a missing reference as no KL). With β = 0 and γ = 1 every
    token of row i carries r_i, whitened over tokens."""

    def formula(self) -> str:
        kl = f" − {self.kl_coef:g}·{self.kl_kind}(π_θold‖π_ref)_t" if self.kl_coef else ""
        return f"whiten_batch(Σ_{{s≥t}} γ^(s−t) (r·1[last]{kl})_s)"

    gamma: float = 1.0

    def returns(self, b: Batch, all_reduce=None) -> Tensor:
        r = b.reward[:, None] * last_token(b.mask)
        if self.kl_coef and b.logp_ref is not None:
            r = r - self.kl_coef * masked(b, kl_estimate(self.kl_kind, b.logp_old - b.logp_ref))
        return discounted_reverse_cumsum(r, self.gamma) * b.mask

    def __call__(self, b: Batch, all_reduce=None) -> Tensor:
        return whiten(self.returns(b), b.mask * b.rollouts[:, None], all_reduce)


# ------------------------------------------------------------------------------ reductions
# Each declares what its normaliser counts (`slots.Reduction`): the estimator takes the count
# once per step over the trained rows (all ranks), so micro-batching never changes Z.


@dataclass(frozen=True)
class TokenMean(Reduction):
    """L = Σ_{i,t} ℓ_{i,t} / Σ_i |τ_i| over the whole step's batch (DAPO, arXiv 2503.14476).
    Every token weighs the same; the count is global, never per micro-batch."""

    counts = TOKENS

    def formula(self) -> str:
        return "Σ_{i,t} ℓ / Σ_i |τ_i|"

    def row_weight(self, mask: Tensor) -> Tensor:
        return torch.ones_like(mask[:, 0])


@dataclass(frozen=True)
class SeqMeanTokenMean(Reduction):
    """L = (1/N) Σ_i (1/|τ_i|) Σ_t ℓ_{i,t} (GRPO, DeepSeekMath Eq. 3; paper Eq. 16): each
    sequence weighs the same, shorter sequences' tokens more (Dr. GRPO's length bias)."""

    counts = ROWS

    def formula(self) -> str:
        return "(1/N) Σ_i (1/|τ_i|) Σ_t ℓ"

    def row_weight(self, mask: Tensor) -> Tensor:
        return 1.0 / mask.sum(-1).clamp_min(1)


@dataclass(frozen=True)
class SeqMeanTokenSum(Reduction):
    """L = (1/N) Σ_i Σ_t ℓ_{i,t}: the Monte Carlo average of whole-sequence score-function
    terms, unbiased for REINFORCE/RLOO (paper Eq. 11 as printed, (1/n)Σ_iΣ_t)."""

    counts = ROWS

    def formula(self) -> str:
        return "(1/N) Σ_i Σ_t ℓ"

    def row_weight(self, mask: Tensor) -> Tensor:
        return torch.ones_like(mask[:, 0])


@dataclass(frozen=True)
class ConstantNormaliser(Reduction):
    """L = Σ_{i,t} ℓ_{i,t} / (C · N) with ``per_row`` (Dr. GRPO, arXiv 2503.20783: C = the
    generation budget; TRL's ``loss_type="dr_grpo"``), or Σ ℓ / C without it (the official
    HPT/LUFFY code: Σ over tokens / 8192 per rank, averaged over 8 ranks ⇒ C = 8192·8).
    No per-sequence length division, hence no length bias."""

    def formula(self) -> str:
        return f"Σ_{{i,t}} ℓ / ({self.constant:g}·N)" if self.per_row else f"Σ_{{i,t}} ℓ / {self.constant:g}"

    constant: float = 1024.0
    per_row: bool = True

    @property
    def counts(self) -> str:
        return ROWS if self.per_row else CONSTANT

    @property
    def scale(self) -> float:
        return self.constant

    def row_weight(self, mask: Tensor) -> Tensor:
        return torch.ones_like(mask[:, 0])


# ----------------------------------------------------------------------------- extra terms


def kl_estimate(kind: str, d: Tensor) -> Tensor:
    """Schulman's estimators of KL from d = log π − log π_ref (joschu.net/blog/kl-approx):
    k1 = d, k2 = ½d², k3 = e^{−d} + d − 1."""
    return {"k1": lambda: d, "k2": lambda: 0.5 * d * d, "k3": lambda: torch.exp(-d) + d - 1}[kind]()


@dataclass(frozen=True)
class KLPenalty:
    """coef · KL(π_θ‖π_ref) per token, added to the loss: `kl_estimate` of d = log π_θ − log π_ref
    (k3 for GRPO, DeepSeekMath), 0 on padding. Needs ``Batch.logp_ref``."""

    coef: float = 0.04
    kind: str = "k3"
    needs = ("logp_ref",)

    def __post_init__(self):
        if self.kind not in ("k1", "k2", "k3"):
            raise ValueError(f"KLPenalty.kind must be 'k1', 'k2' or 'k3', got {self.kind!r}")

    def __call__(self, b: Batch, picked: Optional[Tensor] = None) -> Tensor:
        return kl_estimate(self.kind, masked(b, b.logp - b.logp_ref))


# ----------------------------------------------------------------------------------- gates


def pass_rates(b: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: (#correct rollouts c, #rollouts n, pass rate P = c/n; 0 with no rollouts) of its
    prompt (paper Eq. 7–8; a rollout is correct when its reward ≥ 0.5)."""
    c, n, _ = group_moments((b.reward >= 0.5).to(b.logp.dtype), b.group, b.rollouts)
    return c, n, c / n.clamp_min(1)


@dataclass(frozen=True)
class Switch(Gate):
    """HPT's switch gate (paper Eq. 10; official ``select_on_off_ada_balance``): with c of n
    rollouts correct, (α, β) = (0, beta) if c ≤ gamma else (1, 0). ``gamma`` is a count out of n
    (Qwen: 0, LLaMA: 2 of 8)."""

    gamma: int = 0
    beta: float = 1.0

    def __call__(self, c: Tensor, n: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        sft = c <= self.gamma + 1e-9
        return (~sft).to(p.dtype), sft.to(p.dtype) * self.beta


@dataclass(frozen=True)
class Linear(Gate):
    """A continuous gate (paper Eq. 9 with f increasing, g decreasing): α = P, β = beta·(1 − P)."""

    beta: float = 1.0

    def __call__(self, c: Tensor, n: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        return p, self.beta * (1 - p)


@dataclass(frozen=True)
class Power(Gate):
    """A continuous gate matching HPT's expected SFT weight: α = 1, β = beta·(1 − P)^k
    (with k = n it is E[1{all n fail}] given P — the smooth version of `Switch(0)`)."""

    k: float = 8.0
    beta: float = 1.0

    def __call__(self, c: Tensor, n: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(p), self.beta * (1 - p) ** self.k


@dataclass(frozen=True)
class Always(Gate):
    """(α, β) ≡ (alpha, beta): both components on every prompt (LUFFY, SRFT)."""

    alpha: float = 1.0
    beta: float = 1.0

    def __call__(self, c: Tensor, n: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        return torch.full_like(p, self.alpha), torch.full_like(p, self.beta)


GATES = {"switch": Switch, "linear": Linear, "power": Power, "always": Always}  # name → gate


def describe(part) -> str:
    """`Clip(eps_low=0.2, eps_high=0.28)`: a part with its hyper-parameters, for tables/records."""
    if part is None:
        return "—"
    return repr(part).replace("estimators.parts.", "")


__all__ = [n for n in dir() if not n.startswith("_") and n not in ("annotations", "dataclass",
           "Optional", "Tensor", "torch", "F", "Batch", "BatchError", "field")]
