"""Parity with an independent published implementation: verl's pure functions in
``verl/trainer/ppo/core_algos.py`` (policy losses, advantage estimators, ``agg_loss``), on the
same random tensors. Where verl's behaviour differs by design, the test pins the difference.

verl is installed without its GPU dependencies (see ``.ci/run``); set UPGE_REQUIRE_VERL=1 to make
a missing verl an error instead of a skip (CI does).
"""
import os

import pytest
import torch

import estimators
from estimators import Batch
from estimators.parts import Clip, ConstantNormaliser, GAE

if os.environ.get("UPGE_REQUIRE_VERL") == "1":
    import verl.trainer.ppo.core_algos as ca  # noqa: F401
ca = pytest.importorskip("verl.trainer.ppo.core_algos")
from verl.workers.config.actor import ActorConfig  # noqa: E402

DT = torch.float64


def verl_config(eps_low=0.2, eps_high=0.2):
    return ActorConfig(strategy="fsdp", ppo_micro_batch_size_per_gpu=2, rollout_n=4,
                       clip_ratio=eps_low, clip_ratio_low=eps_low, clip_ratio_high=eps_high,
                       use_dynamic_bsz=False)


def tensors(B=16, T=9, G=4, seed=0, stale=0.4):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).to(DT)
    logp = (-torch.rand(B, T, generator=g, dtype=DT) * 2 - 0.05).requires_grad_()
    old = logp.detach() + stale * torch.randn(B, T, generator=g, dtype=DT)
    reward = torch.randint(0, 2, (B,), generator=g).to(DT)
    reward[:G] = torch.tensor([1.0, 0.0, 0.0, 1.0])        # no all-equal group in the first one
    return Batch(logp=logp, mask=mask, reward=reward, group=torch.arange(B) // G, logp_old=old)


def verl_advantage(b, use_std):
    token_rewards = torch.zeros_like(b.mask)
    last = b.mask.sum(1).long() - 1
    token_rewards[torch.arange(b.size), last] = b.reward
    adv, _ = ca.compute_grpo_outcome_advantage(token_rewards, b.mask, b.group.numpy(),
                                               norm_adv_by_std_in_grpo=use_std)
    return adv


def grads(loss_a, loss_b, wrt):
    ga = torch.autograd.grad(loss_a, wrt, retain_graph=True)[0]
    gb = torch.autograd.grad(loss_b, wrt)[0]
    return ga, gb


@pytest.mark.parametrize("use_std", [True, False])
def test_group_advantages_match_verl(use_std):
    b = tensors()
    name = "grpo" if use_std else "dr_grpo"
    ours = estimators.get(name).advantage(b)[:, None] * b.mask
    assert torch.allclose(ours, verl_advantage(b, use_std), atol=1e-6)


@pytest.mark.parametrize("name, mode, eps", [
    ("grpo", "seq-mean-token-mean", (0.2, 0.2)),
    ("dapo", "token-mean", (0.2, 0.28)),
])
def test_clipped_policy_losses_match_verl(name, mode, eps):
    b = tensors(seed=1)
    # verl's "vanilla" loss always applies dual-clip (c = 3) to negative advantages;
    # ours applies it only when asked, so compare against Clip(..., dual=3.0)
    est = estimators.get(name).replace(mask=Clip(*eps, dual=3.0))
    adv = verl_advantage(b, use_std=True)
    ref, _ = ca.compute_policy_loss_vanilla(b.logp_old, b.logp, adv, b.mask, loss_agg_mode=mode,
                                            config=verl_config(*eps))
    ours = est(b).loss            # values differ where a clip binds (the mask form drops the
    g_ours, g_ref = grads(ours, ref, b.logp)       # constant clipped value); gradients are equal
    assert torch.allclose(g_ours, g_ref, atol=1e-9)


def test_dual_clip_is_the_only_difference_from_plain_ppo_clipping():
    b = tensors(seed=2, stale=1.5)                      # ratios beyond c = 3 occur
    adv = verl_advantage(b, use_std=True)
    ref, _ = ca.compute_policy_loss_vanilla(b.logp_old, b.logp, adv, b.mask,
                                            loss_agg_mode="seq-mean-token-mean", config=verl_config())
    plain = estimators.get("grpo")(b).loss
    g_plain, g_ref = grads(plain, ref, b.logp)
    beyond = ((torch.exp(b.logp - b.logp_old) > 3) & (adv < 0) & (b.mask > 0))
    assert beyond.any()
    assert torch.allclose(g_plain[~beyond], g_ref[~beyond], atol=1e-6)
    assert torch.all(g_ref[beyond] == 0) and not torch.all(g_plain[beyond] == 0)


def test_dr_grpo_matches_verl_seq_mean_token_sum_norm_with_a_constant():
    b = tensors(seed=3)
    C = 512.0
    est = estimators.get("dr_grpo").replace(reduction=ConstantNormaliser(C), mask=Clip(0.2, 0.2, dual=3.0))
    adv = verl_advantage(b, use_std=False)
    # "seq-mean-token-sum-norm" is "seq-mean-token-sum" divided by a constant (loss_scale_factor)
    ref, _ = ca.compute_policy_loss_vanilla(b.logp_old, b.logp, adv, b.mask, config=verl_config(),
                                            loss_agg_mode="seq-mean-token-sum")
    ours = est(b).loss
    g_ours, g_ref = grads(ours, ref / C, b.logp)
    assert torch.allclose(g_ours, g_ref, atol=1e-9)


def test_verl_default_horizon_normaliser_depends_on_micro_batch_padding():
    """verl's "seq-mean-token-sum-norm" defaults its constant to the micro-batch's padded width,
    so two micro-batches padded differently get different normalisers (a documented pitfall);
    our ConstantNormaliser is fixed, so splitting never changes the gradient."""
    b = tensors(seed=4)
    short = b.mask.clone()
    short[:8, 4:] = 0                                    # the first micro-batch is at most 4 wide
    b = b.replace(mask=short)
    loss_mat = -b.logp
    full = ca.agg_loss(loss_mat, b.mask, "seq-mean-token-sum-norm")
    halves = []
    for idx in (torch.arange(0, 8), torch.arange(8, 16)):
        width = int(b.mask[idx].sum(1).max())            # each micro-batch padded to its own width
        halves.append(ca.agg_loss(loss_mat[idx, :width], b.mask[idx, :width], "seq-mean-token-sum-norm") / 2)
    assert not torch.allclose(full, sum(halves))


def test_gspo_matches_verl():
    b = tensors(seed=5, stale=0.01)
    adv = verl_advantage(b, use_std=True)
    ref, _ = ca.compute_policy_loss_gspo(b.logp_old, b.logp, adv, b.mask, config=verl_config(3e-4, 4e-4),
                                         loss_agg_mode="seq-mean-token-mean")
    ours = estimators.get("gspo")(b).loss
    g_ours, g_ref = grads(ours, ref, b.logp)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


def test_cispo_gradient_matches_verl():
    b = tensors(seed=6, stale=0.5)
    adv = verl_advantage(b, use_std=True)
    ref, _ = ca.compute_policy_loss_cispo(b.logp_old, b.logp, adv, b.mask, config=verl_config(1.0, 0.28),
                                          loss_agg_mode="token-mean")
    ours = estimators.get("cispo")(b).loss                # surrogate values differ (ρ vs log π): compare ∇
    g_ours, g_ref = grads(ours, ref, b.logp)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.99, 0.9)])
def test_gae_matches_verl(gamma, lam):
    b = tensors(seed=7)
    values = torch.randn(b.size, b.logp.shape[1], dtype=DT, generator=torch.Generator().manual_seed(8))
    b = b.replace(values=values)
    token_rewards = torch.zeros_like(b.mask)
    token_rewards[torch.arange(b.size), b.mask.sum(1).long() - 1] = b.reward
    ref_adv, ref_ret = ca.compute_gae_advantage_return(token_rewards, values, b.mask,
                                                       torch.tensor(gamma), torch.tensor(lam))
    _, ret = GAE(gamma, lam).advantages_and_returns(b)
    assert torch.allclose(ret, ref_ret * b.mask, atol=1e-9)          # returns (critic targets)
    assert torch.allclose(GAE(gamma, lam, whiten=True)(b), ref_adv * b.mask, atol=1e-9)


def test_reinforce_pp_matches_verl_advantage_and_vanilla_loss():
    """REINFORCE++ as verl 0.9.1 runs it with ``use_kl_in_reward``: the token reward is the score
    minus β·kl_penalty(old, ref, "kl") (``ray_trainer.apply_kl_penalty``, which needs verl's Ray
    stack, so its two lines are applied here around verl's own ``kl_penalty``), then
    ``compute_reinforce_plus_plus_outcome_advantage`` and the vanilla loss, token-mean."""
    from omegaconf import OmegaConf

    b = tensors(seed=9, stale=0.3)
    ref = b.logp_old + 0.3 * torch.randn(b.logp.shape, generator=torch.Generator().manual_seed(10), dtype=DT)
    b = b.replace(logp_ref=ref)
    est = estimators.get("reinforce_pp")
    beta = est.advantage.kl_coef
    assert beta > 0 and est.advantage.kl_kind == "k1"
    scores = torch.zeros_like(b.mask)
    scores[torch.arange(b.size), b.mask.sum(1).long() - 1] = b.reward
    token_rewards = scores - beta * ca.kl_penalty(b.logp_old, b.logp_ref, kl_penalty="kl") * b.mask
    adv, returns = ca.compute_reinforce_plus_plus_outcome_advantage(
        token_rewards, b.mask, config=OmegaConf.create({"gamma": 1.0}))
    plan = est.plan(b)
    assert torch.allclose(plan.adv * b.mask, adv, atol=1e-6)
    assert torch.allclose(plan.returns, returns, atol=1e-6)
    # gradient with verl's always-on dual clip (c = 3) on our side too; value where nothing clips
    loss, _ = ca.compute_policy_loss_vanilla(b.logp_old, b.logp, adv, b.mask, loss_agg_mode="token-mean",
                                             config=verl_config())
    dual = est.replace(mask=Clip(0.2, 0.2, dual=3.0))
    g_ours, g_ref = grads(dual(b).loss, loss, b.logp)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)
    near = b.replace(logp_old=b.logp.detach() + 0.01 * torch.randn(b.logp.shape, dtype=DT,
                                                                     generator=torch.Generator().manual_seed(11)))
    adv_near = est.plan(near).adv * near.mask
    loss_near, _ = ca.compute_policy_loss_vanilla(near.logp_old, near.logp, adv_near, near.mask,
                                                  loss_agg_mode="token-mean", config=verl_config())
    assert torch.allclose(est(near).loss, loss_near, atol=1e-6)
