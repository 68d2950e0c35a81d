"""Every method as a composition of the five parts: one literal table.

A variant is ``get("grpo").replace(mask=Clip(0.2, 0.28))``; nothing here copies a loss body.
Constants that depend on the run (the Dr. GRPO / HPT generation budget) are the papers' values;
the trainer replaces them with its own ``max_new_tokens`` where the method says so.
"""
from __future__ import annotations

from .baselines import (BestOfGroup, GreedyBaseline, GroupWhitened, LengthWeighted,
                        OptimalTokenBaseline, ShareScaled)
from .estimator import ALL, DEMOS, Estimator, Hybrid, TrainerSteps
from .catalogue import ChordPhi, ChordSchedule, EntropyMasked, GammaWeight, PassAtK, SequenceRatioTokenGrad
from .parts import (CISClip, Clip, ConstantNormaliser, Current, GAE, GroupNormalised, Always,
                    NoClip, Old, Ones, Plain, Reward, SeqMeanTokenMean,
                    SeqMeanTokenSum, SequenceGeometric, Shaped, Switch, TokenMean, Unit, WhitenedReturns)
from .regions import (CovarianceClip, CovarianceTop, Divergence, GeometricClip, PickedPenalty,
                      ProximalPenalty, SoftGate)

GRPO_ADV = GroupNormalised(center="mean", scale="std")
DR_GRPO_ADV = GroupNormalised(center="mean", scale="none")
OFFICIAL_HPT_NORMALISER = ConstantNormaliser(constant=8192 * 8, per_row=False)
TRL_ADV = GroupNormalised(center="mean", scale="std", eps=1e-4)   # TRL 1.16 scale_rewards="group"
TRL_CLIP = Clip(0.2, 0.2)                                          # TRL 1.16 epsilon (epsilon_high = epsilon)

SFT = Estimator(NoClip(), Current(), Ones(), Plain(), TokenMean(), rows=DEMOS,
                source="paper Table 1 row SFT, App. A Eq. 14–15 (token-mean NLL of the demonstration)")

_TABLE: dict = {
    "sft": SFT,
    "reinforce": Estimator(
        NoClip(), Current(), Reward(), Plain(), SeqMeanTokenSum(),
        source="Williams 1992; paper Table 1 row REINFORCE (Ahmadian et al. arXiv 2402.14740); "
               "Â = r (their ±1 is Reward(baseline=0.5, scale=2), 2× the same gradient)"),
    "rloo": Estimator(
        NoClip(), Current(), GroupNormalised(center="loo"), Plain(), SeqMeanTokenSum(),
        source="Kool et al. 2019; Ahmadian et al. arXiv 2402.14740 §3 (leave-one-out baseline)"),
    "reinforce_pp": Estimator(
        Clip(0.2, 0.2), Old(), WhitenedReturns(kl_coef=0.001, kl_kind="k1"), Plain(), TokenMean(),
        needs=("logp_ref",),
        source="Hu, REINFORCE++ arXiv 2501.03262; verl 0.9.1 reinforce_plus_plus with use_kl_in_reward "
               "(k1 KL to π_ref in the token reward, β = 0.001; returns whitened over the batch's "
               "tokens; PPO clip, token-mean)"),
    "ppo": Estimator(
        Clip(0.2, 0.2), Old(), GAE(gamma=1.0, lam=0.95), Plain(), TokenMean(), needs=("values",),
        trainer=TrainerSteps(value_head=True, epochs=4),
        source="Schulman et al. arXiv 1707.06347 + GAE arXiv 1506.02438; paper Table 1 row PPO, App. B.3 Eq. 21"),
    "grpo": Estimator(
        Clip(0.2, 0.2), Old(), GRPO_ADV, Plain(), SeqMeanTokenMean(),
        source="Shao et al. (DeepSeekMath) arXiv 2402.03300 Eq. 3; paper Table 1 row GRPO, Eq. 5, 16–18"),
    "dr_grpo": Estimator(
        Clip(0.2, 0.2), Old(), DR_GRPO_ADV, Plain(), ConstantNormaliser(constant=1024, per_row=True),
        source="Liu et al. (Dr. GRPO) arXiv 2503.20783 §3.2 (no std, no length division; C = generation budget)"),
    "dapo": Estimator(
        Clip(0.2, 0.28), Old(), GRPO_ADV, Plain(), TokenMean(),
        trainer=TrainerSteps(dynamic_sampling=True, overlong_buffer=4096, overlong_penalty=1.0),
        source="Yu et al. (DAPO) arXiv 2503.14476 Eq. 8–13 (clip-higher, token-level loss, "
               "dynamic sampling, overlong reward shaping)"),
    "gspo": Estimator(
        Clip(3e-4, 4e-4), SequenceGeometric(), GRPO_ADV, Plain(), SeqMeanTokenMean(),
        source="Zheng et al. (GSPO) arXiv 2507.18071 Eq. 5–7; paper Table 1 row GSPO (sequence clip)"),
    "cispo": Estimator(
        CISClip(eps_low=1.0, eps_high=0.28), Old(), GRPO_ADV, Plain(), TokenMean(),
        source="MiniMax-M1 arXiv 2506.13585 Eq. 4–5; paper Table 1 row CISPO (no lower bound on the weight)"),
    "luffy": Hybrid(
        rl=Estimator(NoClip(), Old(), GroupNormalised(center="mean", with_demos=True), Plain(), TokenMean()),
        sft=Estimator(NoClip(), Unit(), GroupNormalised(center="mean", with_demos=True), Shaped(gamma=0.1),
                      TokenMean(), rows=DEMOS),
        gate=Always(1.0, 1.0), joint=OFFICIAL_HPT_NORMALISER, entropy_coef=0.001,
        trainer=TrainerSteps(demo_in_group=True),
        source="Yan et al. (LUFFY) arXiv 2504.14945; paper Table 1 row LUFFY; official train_luffy.sh: "
               "7 rollouts + 1 demo per group, union advantage without std, f(π)=π/(π+0.1), no clip"),
    "srft": Estimator(
        NoClip(), Unit(), GroupNormalised(center="mean", scale="std", with_demos=True), Plain(),
        SeqMeanTokenMean(), rows=ALL, trainer=TrainerSteps(demo_in_group=True),
        source="Fu et al. (SRFT); paper Table 1 row SRFT, App. A Eq. 19–20 (π_ref ≡ 1 on G_on ∪ G_off)"),
    "hpt": Hybrid(
        rl=Estimator(NoClip(), Old(), DR_GRPO_ADV, Plain(), OFFICIAL_HPT_NORMALISER),
        sft=SFT, gate=Switch(gamma=0, beta=1.0), entropy_coef=0.001,
        trainer=TrainerSteps(gated_demos=True),
        source="paper §2.4 Alg. 1 as the official code ran it (paper-notes §2.2): Dr. GRPO advantage, "
               "no clip, Σ/(8192·8), SFT token-mean on the demo when c ≤ γ=0 of n=8, entropy 0.001"),
    "hpt_paper": Hybrid(
        rl=Estimator(Clip(0.2, 0.2), Old(), GRPO_ADV, Plain(), SeqMeanTokenSum()),
        sft=SFT.replace(reduction=SeqMeanTokenMean()), gate=Switch(gamma=0, beta=1.0),
        trainer=TrainerSteps(gated_demos=True),
        source="paper §2.4 Eq. 10–12 as printed: std-normalised Â, PPO clip (ε unstated; 0.2), "
               "(1/n)Σ_iΣ_t, SFT (1/|τ*|)Σ_t"),
    # TRL 1.16 GRPOTrainer loss types (trl/trainer/grpo_trainer.py ``_compute_loss``)
    "bnpo": Estimator(
        TRL_CLIP, Old(), TRL_ADV, Plain(), TokenMean(),
        source="TRL 1.16 loss_type=\"bnpo\": PPO clip, Σ ℓ / active tokens — TRL counts the tokens of "
               "each micro-batch; here the step's tokens once (micro-batching never changes the gradient)"),
    "luspo": Estimator(
        TRL_CLIP, SequenceGeometric(), TRL_ADV, Plain(), SeqMeanTokenSum(),
        source="LUSPO arXiv 2602.05261; TRL 1.16 loss_type=\"luspo\" with importance_sampling_level="
               "\"sequence\": GSPO's clipped sequence ratio, each row's loss × its length, mean over rows"),
    "vespo": Estimator(
        GammaWeight(), SequenceRatioTokenGrad(), TRL_ADV, Plain(), TokenMean(),
        source="VESPO arXiv 2602.10693; TRL 1.16 loss_type=\"vespo\": −φ(w)·Â·log π_θ with the gamma "
               "weight φ of the sequence ratio w (k, λ = 2, 3 for Â ≥ 0; 3, 2 else), token-mean"),
    # beyond both peers
    "chord": Hybrid(
        rl=Estimator(Clip(0.2, 0.2), Old(), GRPO_ADV, Plain(), TokenMean()),
        sft=Estimator(NoClip(), Unit(), Ones(), ChordPhi(), TokenMean(), rows=DEMOS),
        gate=ChordSchedule(), trainer=TrainerSteps(gated_demos=True),
        source="Zhang et al. (CHORD) arXiv 2508.11408 §3.2–3.3: (1−μ)·L_GRPO + μ·L_SFT-φ, φ = p(1−p) on "
               "the expert tokens, μ scheduled 0.9 → 0.05 (cosine); n rollouts + the demonstration per prompt"),
    "pkpo": Estimator(
        NoClip(), Current(), PassAtK(k=4), Plain(), SeqMeanTokenSum(),
        source="Walder & Karkhanis (PKPO) arXiv 2505.15201 §3–4: rewards jointly transformed so that "
               "E ĝ = ∇pass@k (k = 4), leave-one-out baseline"),
    "entropy_mask": Estimator(
        Clip(0.2, 0.28), Old(), EntropyMasked(GRPO_ADV, quantile=0.2), Plain(), TokenMean(),
        needs=("entropy",),
        trainer=TrainerSteps(dynamic_sampling=True, overlong_buffer=4096, overlong_penalty=1.0),
        source="Wang et al. \"Beyond the 80/20 rule\" arXiv 2506.01939 §4: DAPO with the policy gradient "
               "on the top 20 % highest-entropy tokens of the batch only (any preset: --entropy-mask Q)"),
}

# verl 0.9.1 (``verl/trainer/ppo/core_algos.py``): policy losses with the GRPO advantage
# (``algorithm.adv_estimator=grpo``), advantage estimators with verl's default "vanilla" loss
# (PPO clip, ε = 0.2; verl adds a dual clip c = 3 that the project's PPO rows leave out) and
# verl's default ``loss_agg_mode="token-mean"`` unless the loss fixes another.
_VERL = "verl 0.9.1 core_algos"
_TABLE.update({
    "dppo_tv": Estimator(
        Divergence("tv", 0.15, 0.15, cap=20.0), Old(), GRPO_ADV, Plain(), TokenMean(),
        source="DPPO (Binary-TV) arXiv 2602.04879 §4; " + _VERL + " compute_policy_loss_dppo_tv "
               "(δ = 0.15 of verl's DPPO recipe, ratio truncated at c = 20 as its code's default)"),
    "dppo_kl": Estimator(
        Divergence("kl", 0.05, 0.05, cap=20.0), Old(), GRPO_ADV, Plain(), TokenMean(),
        source="DPPO (Binary-KL) arXiv 2602.04879 §4; " + _VERL + " compute_policy_loss_dppo_kl "
               "(δ = 0.05 of verl's DPPO recipe, c = 20)"),
    "sapo": Estimator(
        SoftGate(tau_pos=1.0, tau_neg=1.05), Old(), GRPO_ADV, Plain(), SeqMeanTokenMean(),
        source="SAPO arXiv 2511.20347 Eq. 5–6; " + _VERL + " compute_policy_loss_sapo "
               "(τ_pos = 1, τ_neg = 1.05; always seq-mean-token-mean)"),
    "gmpo": Estimator(
        GeometricClip(0.4, 0.4), Old(), GRPO_ADV, Plain(), SeqMeanTokenMean(),
        source="Zhao et al. (GMPO) arXiv 2507.20673 Eq. 5 (clip range e^±0.4); " + _VERL +
               " compute_policy_loss_geo_mean (mean over sequences)"),
    "clip_cov": Estimator(
        CovarianceClip(0.2, 0.2, ratio=0.0002, lower=1.0, upper=5.0), Old(), GRPO_ADV, Plain(), TokenMean(),
        source="Cui et al. (Clip-Cov) arXiv 2505.22617 §4 Eq. 12; " + _VERL + " compute_policy_loss_clip_cov "
               "(r = 0.0002, Cov ∈ (1, 5); the largest-Cov candidates over the step, not random per micro-batch)"),
    "kl_cov": Estimator(
        CovarianceTop(ratio=0.0002), Old(), GRPO_ADV, Plain(), TokenMean(), kl=PickedPenalty(coef=0.1),
        source="Cui et al. (KL-Cov) arXiv 2505.22617 §4 Eq. 13; " + _VERL + " compute_policy_loss_kl_cov "
               "(r = 0.0002, ppo_kl_coef = 0.1; top-Cov tokens over the step, not per micro-batch)"),
    "dro": Estimator(
        NoClip(), Current(), GRPO_ADV, Plain(), TokenMean(), kl=ProximalPenalty(coef=0.1, kind="k2"),
        source="Richemond et al. (DRO) arXiv 2405.19107; " + _VERL + " compute_policy_loss_dro: "
               "−(Â·log π − ½β(log π − log π_old)²), β = 0.1 (verl has no default)"),
    "gpg": Estimator(
        NoClip(), Current(), ShareScaled(f_norm=1.0), Plain(), TokenMean(),
        source="Chu et al. (GPG) arXiv 2504.02546 Eq. 8; " + _VERL + " compute_gpg_outcome_advantage + "
               "compute_policy_loss_gpg (−Â·log π, token-mean)"),
    "remax": Estimator(
        Clip(0.2, 0.2), Old(), GreedyBaseline(kl_coef=0.001, kl_kind="k1"), Plain(), TokenMean(),
        needs=("reward_baseline", "logp_ref"),
        source="Li et al. (ReMax) arXiv 2310.10505 Eq. 6; " + _VERL + " compute_remax_outcome_advantage "
               "(baseline: reward of the greedy rollout; KL in the reward β = 0.001 as verl's ReMax example)"),
    "opo": Estimator(
        Clip(0.2, 0.2), Old(), LengthWeighted(), Plain(), TokenMean(),
        source="Hao et al. (OPO) arXiv 2505.23585 Eq. 9; " + _VERL + " compute_opo_outcome_advantage"),
    "grpo_passk": Estimator(
        Clip(0.2, 0.2), Old(), BestOfGroup(scale="std"), Plain(), TokenMean(),
        source="Chen et al. (Pass@k training) arXiv 2503.19595; " + _VERL + " compute_grpo_passk_outcome_advantage"),
    "otb": Estimator(
        Clip(0.2, 0.2), Old(), OptimalTokenBaseline(), Plain(), TokenMean(), needs=("sum_pi_squared",),
        source=_VERL + " compute_optimal_token_baseline_advantage (per-position baseline weighted by "
               "W_t = Σ_{s≤t} 1 − 2π_s + Σπ²; Σπ² from the π_θold pass)"),
    "reinforce_pp_baseline": Estimator(
        Clip(0.2, 0.2), Old(), GroupWhitened(kl_coef=0.001, kl_kind="k1"), Plain(), TokenMean(),
        needs=("logp_ref",),
        source="Hu, REINFORCE++ arXiv 2501.03262 §3 (group baseline); " + _VERL +
               " compute_reinforce_plus_plus_baseline_outcome_advantage (KL in the reward, β = 0.001)"),
})

PRESETS: dict = {name: est.replace(name=name) for name, est in _TABLE.items()}


def get(name: str):
    """The preset called ``name``; an unknown name raises KeyError listing the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown estimator {name!r}; valid names: {', '.join(sorted(PRESETS))}") from None
