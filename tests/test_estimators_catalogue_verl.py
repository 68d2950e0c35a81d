"""Parity of the verl-named catalogue presets with verl 0.9.1's own registered functions
(``get_policy_loss_fn`` / ``get_adv_estimator_fn`` + ``agg_loss`` with the matching mode) on the
same random float64 tensors, and the places where verl normalises or chooses per micro-batch
(pinned: verl's result changes with the split, ours does not). SAPO also against TRL 1.16.

Surrogate values differ where the two write the loss differently (ρ vs log π); gradients are
what an estimator is, and they are compared to 1e-6.
"""
import dataclasses
import os

import pytest
import torch

import estimators
from estimators import Batch
from estimators.parts import Clip

if os.environ.get("UPGE_REQUIRE_VERL") == "1":
    import verl.trainer.ppo.core_algos as ca  # noqa: F401
ca = pytest.importorskip("verl.trainer.ppo.core_algos")
from omegaconf import OmegaConf  # noqa: E402
from verl.workers.config.actor import ActorConfig, PolicyLossConfig  # noqa: E402

DT = torch.float64


def verl_config(eps_low=0.2, eps_high=0.2, **kw):
    loss = {k: kw.pop(k) for k in list(kw) if k in PolicyLossConfig.__dataclass_fields__}
    return ActorConfig(strategy="fsdp", ppo_micro_batch_size_per_gpu=2, rollout_n=4, clip_ratio=eps_low,
                       clip_ratio_low=eps_low, clip_ratio_high=eps_high, use_dynamic_bsz=False,
                       policy_loss=PolicyLossConfig(**loss), **kw)


def tensors(B=16, T=9, G=4, seed=0, stale=0.4, reward=None):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).to(DT)
    logp = (-torch.rand(B, T, generator=g, dtype=DT) * 2 - 0.05).requires_grad_()
    old = logp.detach() + stale * torch.randn(B, T, generator=g, dtype=DT)
    r = torch.randint(0, 2, (B,), generator=g).to(DT) if reward is None else reward(g, B)
    r[:G] = torch.tensor([1.0, 0.0, 0.0, 1.0])          # no all-equal group in the first one
    ref = old + 0.3 * torch.randn(B, T, generator=g, dtype=DT)
    spp = torch.exp(old) ** 2 + 0.5 * torch.rand(B, T, generator=g, dtype=DT)
    return Batch(logp=logp, mask=mask, reward=r, group=torch.arange(B) // G, logp_old=old.clamp(max=-1e-3),
                 logp_ref=ref, reward_baseline=torch.rand(B, generator=g, dtype=DT), sum_pi_squared=spp)


def token_rewards(b, kl_coef=0.0):
    """verl's token-level rewards: the score on the last token, minus β·kl_penalty(old, ref, "kl")
    with ``use_kl_in_reward`` (``ray_trainer.apply_kl_penalty``, applied here around verl's own
    ``kl_penalty`` since that function needs verl's Ray stack)."""
    scores = torch.zeros_like(b.mask)
    scores[torch.arange(b.size), b.mask.sum(1).long() - 1] = b.reward
    return scores - kl_coef * ca.kl_penalty(b.logp_old, b.logp_ref, kl_penalty="kl") * b.mask


def grpo_adv(b):
    return ca.compute_grpo_outcome_advantage(token_rewards(b), b.mask, b.group.numpy(),
                                             norm_adv_by_std_in_grpo=True)[0]


def grad(loss, b):
    return torch.autograd.grad(loss, b.logp, retain_graph=True)[0]


def verl_loss(name, b, adv, mode, cfg):
    return ca.get_policy_loss_fn(name)(b.logp_old, b.logp, adv, b.mask, loss_agg_mode=mode, config=cfg)[0]


# ------------------------------------------------------------------------ policy losses


POLICY_LOSSES = {   # preset: (verl loss name, loss_agg_mode, verl config of the preset's constants)
    "dppo_tv": ("dppo_tv", "token-mean", dict(eps_low=0.15, eps_high=0.15, clip_ratio_c=20.0)),
    "dppo_kl": ("dppo_kl", "token-mean", dict(eps_low=0.05, eps_high=0.05, clip_ratio_c=20.0)),
    "sapo": ("sapo", "seq-mean-token-mean", dict(tau_pos=1.0, tau_neg=1.05)),
    "gmpo": ("geo_mean", "seq-mean-token-mean", dict(eps_low=0.4, eps_high=0.4)),
    "kl_cov": ("kl_cov", "token-mean", dict(kl_cov_ratio=0.0002, ppo_kl_coef=0.1)),
    "dro": ("dro", "token-mean", dict(dro_beta=0.1)),
}


def policy_tensors():
    return tensors(B=64, T=12, seed=1, stale=0.5)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_policy_loss_gradient_matches_verl(name):
    loss_name, mode, cfg = POLICY_LOSSES[name]
    b = policy_tensors()
    ref = verl_loss(loss_name, b, grpo_adv(b), mode, verl_config(**cfg))
    est = estimators.get(name)
    g_ours, g_ref = grad(est(b).loss, b), grad(ref, b)
    assert g_ref.abs().sum() > 0
    assert torch.allclose(g_ours, g_ref, atol=1e-6, rtol=0), (g_ours - g_ref).abs().max()


BINDING = {   # preset: (mask field, a value that binds on these tensors, verl's config name)
    "dppo_tv": ("cap", 1.5, "clip_ratio_c"),
    "dppo_kl": ("cap", 1.5, "clip_ratio_c"),
    "kl_cov": ("ratio", 0.02, "kl_cov_ratio"),       # r·N < 1 at the default: one token either way
}


def at_binding_value(name):
    est = estimators.get(name)
    field, value, _ = BINDING[name]
    return est.replace(mask=dataclasses.replace(est.mask, **{field: value}))


@pytest.mark.parametrize("name", sorted(BINDING))
def test_constants_that_do_not_bind_at_the_default_match_verl_where_they_do(name):
    loss_name, mode, cfg = POLICY_LOSSES[name]
    _, value, key = BINDING[name]
    b = policy_tensors()
    ref = verl_loss(loss_name, b, grpo_adv(b), mode, verl_config(**{**cfg, key: value}))
    assert torch.allclose(grad(at_binding_value(name)(b).loss, b), grad(ref, b), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["dppo_tv", "dppo_kl", "sapo", "gmpo", "kl_cov", "dro"])
def test_every_constant_changes_the_gradient_on_these_tensors(name):
    """The parity above is not vacuous: halving any constant of the preset's trust region
    (mask or penalty) changes the gradient on the same tensors (at the binding values of
    `BINDING` for the constants that do not bind at their default)."""
    b = policy_tensors()
    est = at_binding_value(name) if name in BINDING else estimators.get(name)
    base = grad(est(b).loss, b)
    for slot in ("mask", "kl"):
        part = getattr(est, slot)
        for f in dataclasses.fields(part) if part is not None else ():
            value = getattr(part, f.name)
            if not isinstance(value, float):
                continue
            changed = est.replace(**{slot: dataclasses.replace(part, **{f.name: value / 2})})
            assert not torch.allclose(grad(changed(b).loss, b), base, atol=1e-9), (name, slot, f.name)


def test_gpg_matches_verl_advantage_and_loss():
    b = tensors(seed=2, reward=lambda g, B: torch.randint(0, 3, (B,), generator=g).to(DT))
    adv, _ = ca.get_adv_estimator_fn("gpg")(token_rewards(b), b.mask, b.group.numpy())
    est = estimators.get("gpg")
    assert torch.allclose(est.plan(b).adv * b.mask, adv, atol=1e-12)
    ref = verl_loss("gpg", b, adv, "token-mean", verl_config())
    assert torch.allclose(grad(est(b).loss, b), grad(ref, b), atol=1e-6, rtol=0)


def test_clip_cov_matches_verl_when_every_candidate_is_chosen():
    """verl draws ⌊r·N⌋ of the candidate tokens with ``torch.randperm``; with r large enough that
    every candidate is taken the choice is not random, and the gradients agree."""
    b = tensors(seed=3, stale=0.3)
    adv = grpo_adv(b)
    est = estimators.get("clip_cov")
    est = est.replace(mask=est.mask.__class__(0.2, 0.2, ratio=0.2, lower=0.5, upper=5.0))
    picked = est.plan(b).picked
    assert 3 <= picked.sum() < int(0.2 * b.mask.sum())          # some, and fewer than ⌊r·N⌋
    ref = verl_loss("clip_cov", b, adv, "token-mean",
                    verl_config(clip_cov_ratio=0.2, clip_cov_lb=0.5, clip_cov_ub=5.0))
    assert torch.allclose(grad(est(b).loss, b), grad(ref, b), atol=1e-6, rtol=0)


def micro_batch_gradients(fn, b, halves):
    """Σ over micro-batches of the gradient of ``fn(sub-batch)`` (verl's loop), each micro-batch
    weighted by its share of rows (verl's gradient accumulation scale)."""
    total = torch.zeros_like(b.logp)
    for idx in halves:
        total += grad(fn(b.select(idx), idx) * len(idx) / b.size, b)
    return total


@pytest.mark.parametrize("name", ["kl_cov", "clip_cov"])
def test_verl_covariance_choice_depends_on_the_micro_batch_ours_does_not(name):
    """verl computes the covariance's means and ⌊r·N⌋ on each micro-batch, so splitting a step
    in two changes which tokens are picked and the gradient; our pick is made once per step."""
    b = tensors(seed=4, stale=0.3)
    adv = grpo_adv(b)
    loss_name, mode, cfg = POLICY_LOSSES.get(name, ("clip_cov", "token-mean", {}))
    cfg = cfg or dict(clip_cov_ratio=0.02, clip_cov_lb=0.2, clip_cov_ub=5.0)
    est = estimators.get(name)
    if name == "clip_cov":
        est = est.replace(mask=est.mask.__class__(0.2, 0.2, ratio=0.02, lower=0.2, upper=5.0))
    halves = [torch.arange(0, 8), torch.arange(8, 16)]
    torch.manual_seed(0)
    full = grad(verl_loss(loss_name, b, adv, mode, verl_config(**cfg)), b)
    torch.manual_seed(0)
    split = micro_batch_gradients(lambda s, idx: verl_loss(loss_name, s, adv[idx], mode, verl_config(**cfg)), b, halves)
    assert not torch.allclose(full, split, atol=1e-6)
    plan = est.plan(b)
    ours_full = grad(est(b, plan).loss, b)
    ours_split = sum(grad(est(b.select(i), plan.select(i)).loss, b) for i in halves)
    assert torch.allclose(ours_full, ours_split, atol=1e-12)


# ------------------------------------------------------------------ advantage estimators


def verl_vanilla(b, adv):
    return verl_loss("vanilla", b, adv, "token-mean", verl_config())


ADVANTAGES = {   # preset: verl advantage (our batch → verl's [B, T] advantages)
    "remax": lambda b: ca.get_adv_estimator_fn("remax")(
        token_rewards(b, 0.001), b.reward_baseline, b.mask)[0],
    "opo": lambda b: ca.get_adv_estimator_fn("opo")(token_rewards(b), b.mask, b.group.numpy())[0],
    "grpo_passk": lambda b: ca.get_adv_estimator_fn("grpo_passk")(
        token_rewards(b), b.mask, b.group.numpy(), config=OmegaConf.create({"norm_adv_by_std_in_grpo": True}))[0],
    "otb": lambda b: ca.get_adv_estimator_fn("optimal_token_baseline")(
        token_rewards(b), b.mask, b.group.numpy(), b.logp_old, b.sum_pi_squared)[0],
    "reinforce_pp_baseline": lambda b: ca.get_adv_estimator_fn("reinforce_plus_plus_baseline")(
        token_rewards(b, 0.001), b.mask, b.group.numpy())[0],
}


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_advantage_and_vanilla_loss_match_verl(name):
    b = tensors(seed=5, reward=lambda g, B: torch.rand(B, generator=g, dtype=DT))
    ref_adv = ADVANTAGES[name](b)
    est = estimators.get(name)
    adv = est.plan(b).adv * b.mask
    tol = 1e-6 if name == "otb" else 1e-9                    # verl's OTB adds 1e-8 to ΣW
    assert torch.allclose(adv, ref_adv, atol=tol, rtol=0), (adv - ref_adv).abs().max()
    assert adv.abs().sum() > 0
    # the loss: verl's vanilla PPO loss always applies a dual clip (c = 3); ours when asked
    dual = est.replace(mask=Clip(0.2, 0.2, dual=3.0))
    g_ours, g_ref = grad(dual(b).loss, b), grad(verl_vanilla(b, ref_adv), b)
    assert torch.allclose(g_ours, g_ref, atol=1e-6, rtol=0)


def test_otb_zero_tail_and_unequal_lengths_are_exercised():
    """The OTB parity runs on groups with a strictly longest rollout (the zero-tail rule)."""
    b = tensors(seed=5)
    lengths = b.mask.sum(-1).view(-1, 4)
    top = lengths.topk(2, dim=-1).values
    assert bool((top[:, 0] > top[:, 1]).any())


# ----------------------------------------------------------------------------- TRL


def test_sapo_matches_trl_grpo_trainer(tmp_path):
    """TRL 1.16 ships SAPO as ``loss_type="sapo"``: its own ``_compute_loss`` on the same tensors
    (importance-sampling ratio 1: no engine mismatch)."""
    import test_estimators_trl_parity as trl_parity      # its TRL trainer without a model
    t = trl_parity.trl_trainer("sapo", tmp_path, 0.2, 0.2)
    assert (t.args.sapo_temperature_pos, t.args.sapo_temperature_neg) == (1.0, 1.05)
    b = tensors(seed=6, stale=0.3)
    b = b.replace(logp_behavior=b.logp_old)
    est = estimators.get("sapo")
    theirs = trl_parity.trl_loss(t, b, est.advantage(b))
    assert torch.allclose(grad(est(b).loss, b), grad(theirs, b), atol=1e-6, rtol=0)


# ------------------------------------------------------------------ end to end (slow)

CATALOGUE = ["dppo_tv", "dppo_kl", "sapo", "gmpo", "clip_cov", "kl_cov", "dro", "gpg", "remax", "opo",
             "grpo_passk", "otb", "reinforce_pp_baseline"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", CATALOGUE)
def test_catalogue_preset_trains_two_steps(tmp_path, preset):
    """Each preset trains 2 steps on the embedded default model and task, with the trainer
    supplying what it declares (π_ref, the greedy rollout's reward, Σπ² of the π_θold pass)."""
    import math

    from test_training_e2e import TINY, check_common, read, small
    from training import base, run

    os.environ["UPGE_CACHE"] = str(tmp_path / "cache")
    model = str(base.ensure_base(TINY, log=lambda s: None))
    run.main(small(preset, model, tmp_path))
    check_common(tmp_path / preset)
    metrics, _ = read(tmp_path / preset)
    assert all(math.isfinite(metrics[s]["train/loss"]) for s in (1, 2))


def test_a_need_the_trainer_cannot_supply_is_a_clear_error():
    from training.config import RunConfig
    from training.stages import make_stage

    est = estimators.get("grpo").replace(needs=("process_rewards",))
    estimators.PRESETS["_needs_test"] = est
    try:
        with pytest.raises(ValueError, match=r"'_needs_test' needs Batch.process_rewards, which this trainer cannot"):
            make_stage("_needs_test", RunConfig(preset="grpo"), 1, 2)
    finally:
        del estimators.PRESETS["_needs_test"]


@pytest.mark.parametrize("name", ["kl_cov", "dro"])
def test_kl_coef_does_not_silently_replace_a_preset_penalty(name):
    from training.config import RunConfig
    from training.stages import make_stage

    with pytest.raises(ValueError, match=rf"--kl-coef 0.05: preset '{name}' already has a penalty"):
        make_stage(name, RunConfig(preset=name, kl_coef=0.05), 1, 2)
    make_stage("grpo", RunConfig(preset="grpo", kl_coef=0.05), 1, 2)


def test_sum_pi_squared_from_the_chunked_head_equals_the_full_softmax():
    from training.logprobs import token_logp_entropy

    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(3, 5, 8, generator=g, dtype=DT), torch.randn(11, 8, generator=g, dtype=DT)
    bias, targets = torch.randn(11, generator=g, dtype=DT), torch.randint(0, 11, (3, 5), generator=g)
    mask = (torch.arange(5)[None] < torch.tensor([5, 3, 1])[:, None]).to(DT)
    _, _, sq = token_logp_entropy(hidden, weight, bias, targets, mask, 0.7, chunk_bytes=64,
                                  sum_pi_squared=True)
    p = torch.softmax((hidden @ weight.T + bias) / 0.7, -1)
    assert torch.allclose(sq, (p ** 2).sum(-1) * mask, atol=1e-12)


@pytest.mark.parametrize("name, why", [("clip_cov", "picks tokens in its plan"), ("kl_cov", "picks tokens"),
                                       ("dro", "adds ProximalPenalty"), ("remax", "needs Batch.reward_baseline"),
                                       ("otb", "needs Batch.sum_pi_squared")])
def test_the_verl_plugin_refuses_what_its_plan_fields_cannot_carry(name, why):
    from integrations.verl import trainable

    with pytest.raises(ValueError, match=rf"preset '{name}' .*{why}.*use verl's own"):
        trainable(name)
    for ok in ("dppo_tv", "sapo", "gmpo", "gpg", "opo", "grpo_passk", "reinforce_pp_baseline"):
        trainable(ok)
