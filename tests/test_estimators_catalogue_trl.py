"""The TRL loss types (bnpo, luspo, vespo), the rollout corrections, chord, pkpo and the entropy
mask: parity with TRL 1.16's own code, and exact maths.

TRL computes advantages and the rollout-correction ratio inside
``GRPOTrainer._generate_and_score_completions`` and the loss inside ``_compute_loss``. Both
are called on a trainer object created without ``__init__`` (no model download, no vLLM): its
attributes are TRL's defaults (a real ``GRPOConfig`` and ``Accelerator``) and the calls that
need a model or a sampler are the test's — ``_generate`` returns the test's completion ids and
the sampler's per-token log-probs, ``_calculate_rewards`` the test's rewards,
``_get_per_token_logps_and_entropies`` the test's π_θold (while generating) and π_θ with its
entropies (in the loss). Everything between — the advantages, the importance-sampling ratio of
each ``vllm_importance_sampling_mode`` with its bounds, the ratio, clip, gamma weight, entropy
mask and normaliser — is TRL's own code.
"""
from __future__ import annotations

import itertools
import math
import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

import estimators
from estimators import Batch, Hybrid
from estimators.catalogue import (ChordSchedule, EntropyMasked, PassAtK, _subset_max_weights, top_entropy,
                                  with_entropy_mask)
from estimators.parts import (FIXED_BOUNDS, MASK, ROLLOUT_CORRECTIONS, SEQUENCE, TOKEN, TRUNCATE, Current,
                              NoClip, Old, Plain, RolloutIS, TruncatedIS)
from training.rollout import engines

if os.environ.get("UPGE_REQUIRE_TRL") == "1":  # CI installs TRL: the test must run there
    import trl  # noqa: F401
trl = pytest.importorskip("trl")
from accelerate import Accelerator  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

DT = torch.float64
G = 4


# ------------------------------------------------------------------------ driving TRL's code


def trl_trainer(tmp_path, loss_type="bnpo", mode=None, clip_min=None, clip_max=3.0, level="token",
                top_entropy_quantile=1.0, accumulation=1, epsilon_high=None) -> GRPOTrainer:
    """A GRPOTrainer without ``__init__``: TRL's defaults, vLLM-corrected when ``mode`` is given."""
    use_vllm = mode is not None
    args = GRPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, loss_type=loss_type, beta=0.0,
                      importance_sampling_level=level, top_entropy_quantile=top_entropy_quantile,
                      vllm_importance_sampling_mode=mode or "sequence_mask",
                      vllm_importance_sampling_clip_min=clip_min, vllm_importance_sampling_clip_max=clip_max,
                      num_generations=G, epsilon_high=epsilon_high,
                      num_iterations=2)  # > 1: TRL scores π_θold while generating (sample reuse)
    t = GRPOTrainer.__new__(GRPOTrainer)
    model = torch.nn.Linear(1, 1)
    model.is_gradient_checkpointing = False
    t.args, t.accelerator, t.model = args, Accelerator(cpu=True), model
    t.loss_type, t.beta = loss_type, args.beta
    t.epsilon_low = args.epsilon                              # as GRPOTrainer.__init__ sets them
    t.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    t.importance_sampling_level, t.top_entropy_quantile = args.importance_sampling_level, args.top_entropy_quantile
    t.off_policy_mask_threshold = args.off_policy_mask_threshold
    t.use_vllm, t.vllm_importance_sampling_correction = use_vllm, use_vllm
    t.vllm_importance_sampling_mode = args.vllm_importance_sampling_mode
    t.vllm_importance_sampling_clip_min = args.vllm_importance_sampling_clip_min
    t.vllm_importance_sampling_clip_max = args.vllm_importance_sampling_clip_max
    t.current_gradient_accumulation_steps, t._entropy_bonus_enabled, t.aux_loss_enabled = accumulation, False, False
    t.num_iterations, t.num_generations = args.num_iterations, G
    t.environment_factories, t.environments, t.tools, t.rollout_func = None, [], None, None
    t._tokenizer, t.pad_to_multiple_of, t.mask_truncated_completions = SimpleNamespace(pad_token_id=0), None, False
    t.multi_objective_aggregation, t.scale_rewards = args.multi_objective_aggregation, args.scale_rewards
    t.reward_weights, t.reward_func_names = torch.ones(1), ["r"]
    t.max_completion_length, t.log_multimodal = args.max_completion_length, False
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    t._logs = {"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": [],
               "extra": defaultdict(list), "images": []}
    t._pending_extra_logs, t._pending_metrics = {}, {}
    return t


def tensors(B=12, T=9, seed=0, stale=0.15, engine=0.5, entropy=False):
    """Random rows in groups of G; row 0 has all T tokens (TRL pads to the longest row)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T)[None] < lengths[:, None]).to(DT)
    logp = (-torch.rand(B, T, generator=g, dtype=DT) * 2 - 0.05).requires_grad_()
    old = (logp.detach() + stale * torch.randn(B, T, generator=g, dtype=DT)).clamp(max=-1e-3)
    behaviour = (old + engine * torch.randn(B, T, generator=g, dtype=DT)).clamp(max=-1e-3)
    reward = torch.randint(0, 2, (B,), generator=g).to(DT)
    reward[:G] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    ent = (torch.rand(B, T, generator=g) * 3).to(DT) if entropy else None   # float32-exact values
    return Batch(logp=logp, mask=mask, reward=reward, group=torch.arange(B) // G, logp_old=old,
                 logp_behavior=behaviour, entropy=ent)


def trl_inputs(t: GRPOTrainer, b: Batch) -> dict:
    """TRL's ``_generate_and_score_completions`` on the rows of ``b`` (π_θold = b.logp_old, the
    sampler's log-probs = b.logp_behavior, rewards = b.reward)."""
    B, T = b.mask.shape
    n = b.mask.sum(-1).long().tolist()
    completions = [list(range(1, k + 1)) for k in n]
    sampling = [b.logp_behavior[i, :k].tolist() for i, k in enumerate(n)]
    t._generate = lambda prompts: ([[1]] * B, completions, None, ["c"] * B, sampling, {}, None, [])
    t._calculate_rewards = lambda *a: b.reward[:, None].clone()
    t._get_per_token_logps_and_entropies = lambda *a, **k: (b.logp_old.clone(), None, None)
    return t._generate_and_score_completions([{"prompt": "p"} for _ in range(B)])


def trl_grad(t: GRPOTrainer, b: Batch, inputs: dict, rows=None) -> torch.Tensor:
    """∇ of TRL's ``_compute_loss`` w.r.t. b.logp, on ``rows`` (a micro-batch) or all rows."""
    rows = torch.arange(b.size) if rows is None else rows
    ent = b.entropy[rows] if b.entropy is not None else torch.zeros_like(b.logp[rows])
    t._get_per_token_logps_and_entropies = lambda *a, **k: (b.logp[rows], ent, None)
    sub = {k: (v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == b.size else v)
           for k, v in inputs.items()}
    return torch.autograd.grad(t._compute_loss(t.model, sub), b.logp)[0]


def ours(est, b: Batch) -> torch.Tensor:
    return torch.autograd.grad(est(b).loss, b.logp)[0]


# ------------------------------------------------------------------ parity with TRL 1.16


TRL_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@pytest.mark.parametrize("mode", TRL_MODES)
@pytest.mark.parametrize("bounds", [(None, 3.0), (0.5, 2.0)])
def test_rollout_corrections_equal_trl_vllm_importance_sampling_modes(mode, bounds, tmp_path):
    """Each TRL mode (and its C_min/C_max) is `ROLLOUT_CORRECTIONS[mode]` with cap/floor: the
    same gradient, advantages (bnpo = TRL's group std, eps 1e-4) and largest weight."""
    clip_min, clip_max = bounds
    t = trl_trainer(tmp_path, "bnpo", mode, clip_min, clip_max)
    b = tensors(seed=1, engine=0.6 if mode.startswith("token") else 0.4)
    inputs = trl_inputs(t, b)
    part = ROLLOUT_CORRECTIONS[mode]
    part = part.__class__(cap=clip_max, floor=clip_min or 0.0) if isinstance(part, TruncatedIS) else \
        RolloutIS(cap=clip_max, floor=clip_min or 0.0, level=part.level, bound=part.bound)
    est = engines.with_correction(estimators.get("bnpo"), part)
    assert torch.allclose(est.advantage(b), inputs["advantages"], atol=1e-12)
    w = inputs["importance_sampling_ratio"].expand_as(b.logp)
    assert torch.allclose(est.denominator.weight(b) * b.mask, w * b.mask, atol=1e-12)
    summary = part.summary(b)
    assert 0 < summary[3] < summary[2]                   # some tokens, not all, are corrected
    assert summary[4].item() == pytest.approx(t._metrics["train"]["sampling/importance_sampling_ratio/max"][-1])
    assert torch.allclose(ours(est, b), trl_grad(t, b, inputs), atol=1e-6)


def test_icepop_is_trl_token_mask_with_icepop_bounds(tmp_path):
    t = trl_trainer(tmp_path, "bnpo", "token_mask", clip_min=0.5, clip_max=5.0)
    b = tensors(seed=2, engine=0.8)
    inputs = trl_inputs(t, b)
    est = engines.with_correction(estimators.get("bnpo"), ROLLOUT_CORRECTIONS["icepop"])
    assert "icepop" in FIXED_BOUNDS and ROLLOUT_CORRECTIONS["icepop"].summary(b)[3] > 0
    assert torch.allclose(ours(est, b), trl_grad(t, b, inputs), atol=1e-6)


def test_bnpo_equals_trl_and_stays_invariant_where_trl_normalises_per_micro_batch(tmp_path):
    b = tensors(seed=3, stale=0.3)
    t = trl_trainer(tmp_path, "bnpo")
    inputs = trl_inputs(t, b)
    est = estimators.get("bnpo")
    full = ours(est, b)
    assert torch.allclose(full, trl_grad(t, b, inputs), atol=1e-6)
    # two micro-batches of one step (gradient accumulation 2): TRL divides each by its own tokens
    halves = [torch.arange(0, 4), torch.arange(4, 12)]
    t2 = trl_trainer(tmp_path, "bnpo", accumulation=2)
    theirs = sum(trl_grad(t2, b, inputs, rows) for rows in halves)
    plan = est.plan(b)
    mine = sum(torch.autograd.grad(est(b.select(r), plan.select(r)).loss, b.logp)[0] for r in halves)
    assert torch.allclose(mine, full, atol=1e-12)        # ours: the step's token count, once
    assert (theirs - full).abs().max() > 1e-3            # TRL's changes with the split


def test_luspo_equals_trl_sequence_level(tmp_path):
    b = tensors(seed=4, stale=0.6)
    t = trl_trainer(tmp_path, "luspo", level="sequence")
    inputs = trl_inputs(t, b)
    est = estimators.get("luspo")
    out = est(b)
    assert 0 < out.stats["clip_fraction"] < 1           # the sequence clip binds on some rows
    assert torch.allclose(ours(est, b), trl_grad(t, b, inputs), atol=1e-6)


@pytest.mark.parametrize("stale", [0.05, 0.3])
def test_vespo_equals_trl_gamma_weights(stale, tmp_path):
    b = tensors(seed=5, stale=stale)
    t = trl_trainer(tmp_path, "vespo")
    inputs = trl_inputs(t, b)
    g = ours(estimators.get("vespo"), b)
    assert torch.allclose(g, trl_grad(t, b, inputs), atol=1e-6)
    assert g.abs().sum() > 0


@pytest.mark.parametrize("loss_type", ["bnpo", "dapo"])
def test_entropy_mask_equals_trl_top_entropy_quantile(loss_type, tmp_path):
    b = tensors(seed=6, stale=0.2, entropy=True)
    t = trl_trainer(tmp_path, loss_type, top_entropy_quantile=0.2,
                    epsilon_high=estimators.get(loss_type).mask.eps_high)
    inputs = trl_inputs(t, b)
    trl_adv = estimators.get("bnpo").advantage               # TRL's std epsilon (1e-4)
    est = with_entropy_mask(estimators.get(loss_type).replace(advantage=trl_adv), 0.2)
    kept = (est.plan(b).adv != 0) & (b.mask > 0)
    assert 0 < kept.sum() < 0.35 * b.mask.sum()
    assert torch.allclose(ours(est, b), trl_grad(t, b, inputs), atol=1e-6)


# ------------------------------------------------------------------------- exact maths


def test_every_correction_with_an_infinite_cap_is_plain_importance_sampling():
    b = tensors(seed=7, engine=0.4)
    d = (b.logp_old - b.logp_behavior) * b.mask
    plain = {TOKEN: torch.exp(d), SEQUENCE: torch.exp(d.sum(-1, keepdim=True)).expand_as(d)}
    base = estimators.get("grpo")
    for level, bound in itertools.product((TOKEN, SEQUENCE), (TRUNCATE, MASK)):
        part = RolloutIS(cap=math.inf, level=level, bound=bound)
        assert torch.allclose(part.weight(b) * b.mask, plain[level] * b.mask, atol=1e-12)
        est = engines.with_correction(base, part)
        adv = base.advantage(b)[:, None]
        ratio = torch.exp(b.logp - b.logp_old)
        surrogate = -((base.mask(ratio, adv).detach() * ratio * plain[level] * adv * b.mask).sum(1)
                      / b.mask.sum(1)).mean()
        assert torch.allclose(ours(est, b), torch.autograd.grad(surrogate, b.logp)[0], atol=1e-12)
        assert part.summary(b)[3] == 0                 # nothing truncated or masked


def test_correction_bounds_and_statistics():
    b = tensors(seed=8, engine=0.7)
    r = torch.exp((b.logp_old - b.logp_behavior) * b.mask)
    m = b.mask > 0
    trunc = RolloutIS(cap=1.5, floor=0.7, level=TOKEN, bound=TRUNCATE)
    mask = RolloutIS(cap=1.5, floor=0.7, level=TOKEN, bound=MASK)
    assert torch.equal(trunc.weight(b)[m], r.clamp(0.7, 1.5)[m])
    assert torch.equal(mask.weight(b)[m], torch.where((r >= 0.7) & (r <= 1.5), r, 0 * r)[m])
    s = mask.summary(b)
    w = mask.weight(b)[m]
    assert s[0] == pytest.approx(w.sum().item()) and s[1] == pytest.approx((w * w).sum().item())
    assert s[3].item() == ((r[m] < 0.7) | (r[m] > 1.5)).sum().item() and s[4] == w.max()
    with pytest.raises(ValueError, match="floor 2.0 must be below cap 1.0"):
        RolloutIS(cap=1.0, floor=2.0)
    with pytest.raises(ValueError, match="level must be one of"):
        RolloutIS(level="row")


def test_entropy_mask_with_q_one_is_the_unmasked_preset():
    b = tensors(seed=9, entropy=True)
    for name in ("grpo", "dapo", "bnpo", "vespo", "pkpo"):
        est = estimators.get(name)
        assert torch.allclose(ours(with_entropy_mask(est, 1.0), b), ours(est, b), atol=1e-12), name
    assert torch.allclose(ours(estimators.get("entropy_mask").replace(
        advantage=EntropyMasked(estimators.get("dapo").advantage, 1.0)), b), ours(estimators.get("dapo"), b))


def test_top_entropy_matches_the_quantile_rule_and_rejects_a_missing_entropy():
    g = torch.Generator().manual_seed(10)
    for q in (0.0, 0.2, 0.5, 0.9, 1.0):
        h = torch.rand(6, 11, generator=g, dtype=DT)
        h[0, :3] = h[1, 0]                                 # ties
        on = (torch.rand(6, 11, generator=g) > 0.3).to(DT)
        thr = torch.quantile(h[on > 0], 1 - q)
        assert torch.equal(top_entropy(h, on, q), ((h >= thr) & (on > 0)).to(DT)), q
    b = tensors(seed=10)
    with pytest.raises(estimators.BatchError, match="Batch.entropy is required by entropy_mask"):
        estimators.get("entropy_mask")(b)


def test_chord_reduces_to_its_rl_estimator_at_mu_0_and_to_sft_at_mu_1():
    from test_estimators_identities import random_batch
    b = random_batch(demos=True, seed=11)
    chord = estimators.get("chord")
    rl_only = chord.replace(gate=ChordSchedule(mu_peak=0.0, mu_valley=0.0))
    roll, demo = b.rollouts.nonzero()[:, 0], b.is_demo.nonzero()[:, 0]
    g = ours(rl_only, b)
    assert torch.allclose(g[roll], ours(chord.rl, b.select(roll)), atol=1e-12) and torch.all(g[demo] == 0)
    sft_only = chord.replace(gate=ChordSchedule(mu_peak=1.0, mu_valley=1.0),
                             sft=chord.sft.replace(denominator=Current(), likelihood=Plain()))   # φ ≡ 1
    g = ours(sft_only, b)
    assert torch.allclose(g[demo], ours(estimators.get("sft"), b.select(demo)), atol=1e-12)
    assert torch.all(g[roll] == 0)


def test_chord_phi_weights_the_demonstration_nll_by_p_times_one_minus_p():
    from test_estimators_identities import random_batch
    b = random_batch(demos=True, seed=12)
    chord = estimators.get("chord").replace(gate=ChordSchedule(mu_peak=1.0, mu_valley=1.0))
    demo = b.is_demo
    p = b.logp.detach().exp()
    tok = b.mask * demo[:, None]
    want = -(p * (1 - p)) * tok / tok.sum()              # ∇ of −Σ φ·log p / N_tokens
    assert torch.allclose(ours(chord, b), want, atol=1e-12)


def test_chord_schedule_and_zero_advantage_trains_only_the_demonstrations():
    s = ChordSchedule(mu_peak=0.9, mu_valley=0.05, warmup_steps=10, decay_steps=100)
    assert [round(s.at_step(k).mu, 12) for k in (0, 5, 10, 60, 110, 500)] == \
        [0.0, 0.45, 0.9, round(0.05 + 0.85 * 0.5, 12), 0.05, 0.05]
    chord = estimators.get("chord").at_step(200)
    assert chord.gate.step == 200 and chord.gate.mu == pytest.approx(0.05)
    assert estimators.get("grpo").at_step(7) is estimators.get("grpo")
    from test_estimators_identities import random_batch
    b = random_batch(demos=True, seed=13)
    b = b.replace(reward=torch.ones_like(b.reward))      # every rollout correct: Â ≡ 0
    g = ours(chord, b)
    assert torch.all(g[b.rollouts] == 0) and g[b.is_demo].abs().sum() > 0
    out = chord(b)
    assert all(d["alpha"] == pytest.approx(0.95) and d["beta"] == pytest.approx(0.05) for d in out.gate)


def test_pkpo_transform_is_the_mean_over_k_subsets_of_the_max():
    g = torch.Generator().manual_seed(14)
    for n, k in [(4, 1), (4, 2), (5, 3), (6, 6)]:
        r = torch.rand(n, generator=g, dtype=DT)
        r[1] = r[3]                                        # a tie
        brute = torch.zeros(n, dtype=DT)
        for S in itertools.combinations(range(n), k):
            for i in S:
                brute[i] += r[list(S)].max()
        assert torch.allclose(_subset_max_weights(r, k), brute / math.comb(n, k), atol=1e-12)
    # binary rewards: the paper's closed form k/n, (k/n)·ρ(n−1, c, k−1)
    n, k = 8, 3
    r = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0], dtype=DT)
    c = 2
    rho = 1 - math.comb(n - 1 - c, k - 1) / math.comb(n - 1, k - 1)
    want = torch.where(r > 0, torch.full_like(r, k / n), torch.full_like(r, k / n * rho))
    assert torch.allclose(_subset_max_weights(r, k), want, atol=1e-12)


@pytest.mark.parametrize("G_, k", [(2, 1), (2, 2), (3, 1), (3, 2), (3, 3)])
@pytest.mark.parametrize("baseline", ["loo", "none"])
def test_pkpo_expected_update_is_the_gradient_of_pass_at_k(G_, k, baseline):
    from test_estimators_exact import SEQS, expected_estimate, make_theta, reward, token_logp
    theta = make_theta(15)
    est = estimators.get("pkpo").replace(advantage=PassAtK(k=k, baseline=baseline))
    for x in (0, 1):
        p = (token_logp(theta, x, SEQS).sum(1).exp() * reward(x, SEQS)).sum()
        want = torch.autograd.grad(1 - (1 - p) ** k, theta)[0]
        got = expected_estimate(est, theta, x, G_)
        assert torch.allclose(got, want, atol=1e-10, rtol=0), (x, (got - want).abs().max())
        assert want.abs().max() > 1e-3


def test_pkpo_with_k_one_is_rloo():
    from test_estimators_identities import random_batch
    b = random_batch(seed=16, ragged=True)
    assert torch.allclose(PassAtK(k=1)(b), estimators.get("rloo").advantage(b), atol=1e-12)


def test_new_presets_cite_sources_and_use_the_peers_constants():
    for name in ("bnpo", "luspo", "vespo", "chord", "pkpo", "entropy_mask"):
        assert estimators.get(name).source
    defaults = GRPOConfig(output_dir="unused", report_to=[], use_cpu=True)
    vespo = estimators.get("vespo").mask
    assert (vespo.k_pos, vespo.lambda_pos, vespo.k_neg, vespo.lambda_neg) == (
        defaults.vespo_k_pos, defaults.vespo_lambda_pos, defaults.vespo_k_neg, defaults.vespo_lambda_neg)
    for name in ("bnpo", "luspo"):
        clip = estimators.get(name).mask
        assert (clip.eps_low, clip.eps_high) == (defaults.epsilon, defaults.epsilon_high or defaults.epsilon)
    assert estimators.get("entropy_mask").advantage.quantile == 0.2


# ------------------------------------------------------------------------------ training


def test_run_options_choose_the_correction_and_the_entropy_mask():
    from training.config import parse_args
    from training.stages import make_stages

    stage = make_stages(parse_args(["grpo", "--rollout-correction", "sequence_mask", "--tis-cap", "4",
                                    "--tis-floor", "0.25", "--entropy-mask", "0.3"]))[0]
    d = stage.est.denominator
    assert (d.level, d.bound, d.cap, d.floor) == (SEQUENCE, MASK, 4.0, 0.25) and isinstance(d.base, Old)
    assert stage.correction == RolloutIS(cap=4.0, floor=0.25, level=SEQUENCE, bound=MASK)
    assert isinstance(stage.est.advantage, EntropyMasked) and stage.est.advantage.quantile == 0.3
    icepop = make_stages(parse_args(["hpt", "--rollout-correction", "icepop", "--tis-cap", "4"]))[0]
    assert icepop.est.rl.denominator.cap == 5.0 and icepop.est.rl.denominator.floor == 0.5
    assert isinstance(icepop.est.sft.denominator, Current)
    assert make_stages(parse_args(["grpo"]))[0].correction is None          # hf: none by default
    assert isinstance(make_stages(parse_args(["grpo", "--rollout-engine", "vllm"]))[0].est.denominator, TruncatedIS)
    with pytest.raises(SystemExit):
        parse_args(["grpo", "--tis-floor", "3"])                             # ≥ --tis-cap 2
    with pytest.raises(SystemExit):
        parse_args(["grpo", "--rollout-correction", "seq"])


def test_step_metrics_record_the_correction_statistics():
    import records
    from training.batching import StepMetrics
    from training.distributed import SingleProcess

    b = tensors(seed=17, engine=0.6)
    part = ROLLOUT_CORRECTIONS["token_mask"]
    m = StepMetrics()
    scored = SimpleNamespace(logp=b.logp.detach(), entropy=torch.zeros_like(b.logp))
    for rows in (torch.arange(0, 5), torch.arange(5, 12)):        # two micro-batches of one step
        sub = b.select(rows)
        m.tokens(SimpleNamespace(logp=scored.logp[rows], entropy=scored.entropy[rows]), sub, True, part)
    out = m.token_means(SingleProcess())
    w = part.weight(b)[b.mask > 0]
    assert out[records.ROLLOUT_IS_ESS] == pytest.approx((w.sum() ** 2 / (w.numel() * (w * w).sum())).item())
    assert out[records.ROLLOUT_IS_CORRECTED] == pytest.approx((w == 0).double().mean().item())
    assert out[records.ROLLOUT_IS_WEIGHT_MAX] == pytest.approx(w.max().item())
    none = StepMetrics()
    none.tokens(scored, b, True, None)
    assert records.ROLLOUT_IS_ESS not in none.token_means(SingleProcess())
