"""The probed estimators (probes-spec §6.2): project presets, and documented one-line variants.

Each `Probe` holds a *builder* ``make(P, R, G) -> estimator`` (P prompts, R groups per prompt, G
rows per group; only variants whose constant normaliser depends on the update size use them),
the declared *target* it is read as unbiased for, and whether it runs at a stale θ ≠ θ_old.

Targets (probes-spec §1.1, §1.3):

* ``J``     ∇J = mean_x ∇p_x.
* ``w``     mean_x w(p_x, G)·∇p_x, the exact finite-G implicit target of std normalisation
            (→ 2·arcsin√p as G → ∞, Davis & Recht arXiv 2510.13651).
* ``KL``    mean_x E_{π_β}[∇log π_θ] = −∇KL(π_β‖π_θ) (SFT, DFT arXiv 2508.05629).
* ``Jmu``   mean_x [((G−1)/G)·∇p_x + μ_x ∇log π_θ(y*_x)], μ_x = β(1−p_x)^G: the closed form
            of HPT with γ = 0 (probes-spec §1.3), i.e. ∇J_μ up to the Dr. GRPO factor (G−1)/G.
* ``passk`` mean_x ∇pass@k(x) = mean_x k(1−p_x)^(k−1)·∇p_x (PKPO, k of the pkpo preset).

Sequence-level importance sampling (the unbiased off-policy reference, probes-spec §1.3 (i))
is the part `estimators.parts.SequenceRatio`, composed with the project's `Estimator`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable


import estimators
from estimators import parts as Pt
from estimators.slots import CONSTANT, ROWS


def sequence_behaviour(fields: dict) -> dict:
    """Batch fields for *sequence-level* truncated IS through `parts.TruncatedIS(base=Current())`:
    logp_old := log π_θ (detached) and logp_behavior := log π_θ − log ρ_seq on every token, so
    TruncatedIS's weight min(π_θold/π_behavior, C) is min(ρ_seq, C) (Ionides 2008)."""
    lp = fields["logp"].detach()
    log_rho = ((lp - fields["logp_old"]) * fields["mask"]).sum(-1, keepdim=True)
    return {**fields, "logp_old": lp, "logp_behavior": lp - log_rho}


def _const(est, P: int, R: int, G: int) -> float:
    """The factor that puts a constant-normaliser estimator on the scale of ∇J: C for
    Σ/(C·N) (Dr. GRPO), C/(rows) for Σ/C (official HPT/LUFFY), 1 otherwise."""
    red = est.reductions()[0]
    return {ROWS: red.scale, CONSTANT: red.scale / (P * R * G)}.get(red.counts, 1.0)


def _identity(fields: dict) -> dict:
    return fields


def _one(est, P: int, R: int, G: int) -> float:
    return 1.0


@dataclass(frozen=True)
class Probe:
    """name: table name (preset name, or ``preset[variant]``); make(P, R, G) → estimator;
    target: J | w | KL | Jmu; stale: K stale steps (0: θ = θ_old); prepare: Batch-field hook;
    unit(est, P, R, G): factor applied to the measured gradient (see `_const`); note: why."""

    name: str
    make: Callable
    target: str = "J"
    stale: int = 0
    prepare: Callable = _identity
    unit: Callable = _const
    note: str = ""

    def estimator(self, P: int, R: int, G: int):
        return self.make(P, R, G)


def preset(name: str) -> Callable:
    return lambda P, R, G: estimators.get(name)


def _grpo_no_ln(P, R, G):
    return estimators.get("grpo").replace(reduction=Pt.SeqMeanTokenSum())


def _hpt_const(gamma: int):
    """HPT (official parts: Dr. GRPO advantage, no clip, switch gate γ) with per-prompt constant
    normalisers, RL Σ/(P·R·G) and SFT sequence-sum NLL Σ/(P·R): no normaliser couples prompts,
    so E ĝ = mean_x[((G−1)/G)∇p_x + β·P(c ≤ γ)∇log π(y*)] (closed form for γ = 0)."""
    def make(P, R, G):
        h = estimators.get("hpt")
        return h.replace(rl=h.rl.replace(reduction=Pt.ConstantNormaliser(P * R * G, per_row=False)),
                         sft=h.sft.replace(reduction=Pt.ConstantNormaliser(P * R, per_row=False)),
                         gate=Pt.Switch(gamma=gamma, beta=h.gate.beta), entropy_coef=0.0)
    return make


def _ppo_token(eps: float | None):
    """PPO's token-ratio surrogate (mask Clip(ε) or none) with an RLOO group baseline and a
    per-sequence sum, so that at θ = θ_old it is exactly RLOO (probes-spec §6.2 "exact with a
    group baseline"); stale, it shows the token-ratio (i) and clipping (ii) biases."""
    def make(P, R, G):
        base = estimators.get("ppo")
        mask = Pt.NoClip() if eps is None else Pt.Clip(eps, eps)
        return base.replace(mask=mask, advantage=Pt.GroupNormalised(center="loo"),
                            reduction=Pt.SeqMeanTokenSum(), needs=())
    return make


def _seq_is(P, R, G):
    return estimators.get("rloo").replace(denominator=Pt.SequenceRatio(), reduction=Pt.SeqMeanTokenMean())


def _tis(cap: float):
    def make(P, R, G):
        return estimators.get("rloo").replace(denominator=Pt.TruncatedIS(base=Pt.Current(), cap=cap))
    return make


def on_policy() -> list[Probe]:
    return [
        Probe("reinforce", preset("reinforce")),
        Probe("rloo", preset("rloo")),
        Probe("dr_grpo", preset("dr_grpo"), note="×C (constant normaliser)"),
        Probe("grpo", preset("grpo"), target="w", note="std + 1/|y| (length bias)"),
        Probe("grpo[noLN]", _grpo_no_ln, target="w", note="std, per-sequence sum"),
        Probe("dapo", preset("dapo"), target="w", note="token-mean (no dynamic sampling)"),
        Probe("gspo", preset("gspo"), target="w"),
        Probe("cispo", preset("cispo"), target="w"),
        Probe("reinforce_pp", preset("reinforce_pp")),
        Probe("ppo", preset("ppo"), note="GAE with the exact critic"),
        Probe("sft", preset("sft"), target="KL"),
        Probe("srft", preset("srft")),
        Probe("luffy", preset("luffy"), note="×C/N; entropy bonus off"),
        Probe("hpt", preset("hpt"), target="Jmu", note="×C/N; entropy bonus off"),
        Probe("hpt_paper", preset("hpt_paper"), target="Jmu"),
        Probe("hpt[γ=0,const]", _hpt_const(0), target="Jmu", unit=_one),
        Probe("hpt[γ=1,const]", _hpt_const(1), target="Jmu", unit=_one),
        Probe("bnpo", preset("bnpo"), target="w", note="token-mean over the step (TRL: per micro-batch)"),
        Probe("luspo", preset("luspo"), target="w", note="sequence clip, loss × length"),
        Probe("vespo", preset("vespo"), target="w", note="gamma weight of the sequence ratio"),
        Probe("chord", preset("chord"), note="(1−μ)·GRPO + μ·φ-SFT, μ = 0.9 at step 0"),
        Probe("pkpo", preset("pkpo"), target="passk", note="unbiased for ∇pass@k, not ∇J"),
        Probe("entropy_mask", preset("entropy_mask"), target="w", note="top-20 % entropy tokens"),
    ] + verl_presets()


def verl_presets() -> list[Probe]:
    """verl 0.9.1's policy losses (GRPO's std advantage: target w) and advantage estimators."""
    return [
        Probe("dppo_tv", preset("dppo_tv"), target="w"),
        Probe("dppo_kl", preset("dppo_kl"), target="w"),
        Probe("sapo", preset("sapo"), target="w"),
        Probe("gmpo", preset("gmpo"), target="w"),
        Probe("clip_cov", preset("clip_cov"), target="w", note="covariance-picked tokens detached"),
        Probe("kl_cov", preset("kl_cov"), target="w", note="penalty inactive at θ = θ_old"),
        Probe("dro", preset("dro"), target="w", note="penalty inactive at θ = θ_old"),
        Probe("gpg", preset("gpg"), note="× B/#(r≠0)"),
        Probe("remax", preset("remax"), note="greedy-rollout baseline"),
        Probe("opo", preset("opo")),
        Probe("grpo_passk", preset("grpo_passk"), note="best row only (pass@k target)"),
        Probe("otb", preset("otb"), note="self-inclusive per-token baseline"),
        Probe("reinforce_pp_baseline", preset("reinforce_pp_baseline")),
    ]


def stale(K: int) -> list[Probe]:
    return [
        Probe(f"ppo[eps=0.2,K={K}]", _ppo_token(0.2), stale=K),
        Probe(f"ppo[eps=0.05,K={K}]", _ppo_token(0.05), stale=K),
        Probe(f"token_is[K={K}]", _ppo_token(None), stale=K, note="unclipped token ratio"),
        Probe(f"seq_is[K={K}]", _seq_is, stale=K, note="unbiased reference"),
        Probe(f"tis[C=2,K={K}]", _tis(2.0), stale=K, prepare=sequence_behaviour),
        Probe(f"grpo[K={K}]", preset("grpo"), target="w", stale=K),
        Probe(f"gspo[K={K}]", preset("gspo"), target="w", stale=K),
    ]


def all_probes(stale_steps=(1, 4, 16)) -> list[Probe]:
    out = on_policy()
    for K in stale_steps:
        out += stale(K)
    return out


def select(names: str, stale_steps=(1, 4, 16)) -> list[Probe]:
    """``all`` or a comma list of probe names (a stale name without ``K=`` selects every K).
    Unknown names raise ValueError listing the valid ones, before any work."""
    probes = all_probes(stale_steps)
    if names == "all":
        return probes
    by_name = {p.name: p for p in probes}
    out, bad = [], []
    for n in [s.strip() for s in re.split(r",(?![^\[]*\])", names) if s.strip()]:
        hits = [by_name[n]] if n in by_name else [p for p in probes if p.stale and p.name.split("[")[0] == n]
        (out.extend(hits) if hits else bad.append(n))
    if bad or not out:
        base = sorted({p.name for p in on_policy()} | {p.name.split("[")[0] for p in stale(1)})
        raise ValueError(f"unknown estimator(s) {', '.join(bad) or names!r}; valid names: all, "
                         f"{', '.join(base)} (stale ones also as e.g. 'ppo[eps=0.2,K=4]')")
    return out
