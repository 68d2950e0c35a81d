"""The verl plug-in: ``upge_<preset>`` in verl's registries returns our estimators, and the
registered policy losses / advantage estimators give exactly our estimator's values and
gradients on the same tensors (and verl's own vanilla loss's gradient for upge_grpo).

verl is imported once for this module (slow on a loaded machine); a missing verl skips, unless
UPGE_REQUIRE_VERL=1.
"""
import os

import numpy as np
import pytest
import torch

import estimators
from estimators import Batch

if os.environ.get("UPGE_REQUIRE_VERL") == "1":
    import verl.trainer.ppo.core_algos  # noqa: F401
ca = pytest.importorskip("verl.trainer.ppo.core_algos")
plugin = pytest.importorskip("integrations.verl")
from verl.workers.config.actor import ActorConfig  # noqa: E402
from test_estimators_verl_parity import tensors as parity_batch  # noqa: E402

DT = torch.float64


def actor_config(eps_high=0.2, **global_info):
    cfg = ActorConfig(strategy="fsdp", ppo_micro_batch_size_per_gpu=2, rollout_n=4, clip_ratio=0.2,
                      clip_ratio_low=0.2, clip_ratio_high=eps_high, use_dynamic_bsz=False)
    cfg.global_batch_info.update(global_info)
    return cfg


def tensors(B=12, T=7, G=4, seed=0, stale=0.1):
    """The parity tests' random tensors, unpacked as verl's functions take them."""
    b = parity_batch(B=B, T=T, G=G, seed=seed, stale=stale)
    return b.logp, b.logp_old, b.mask, b.reward, b.group


def ours(name, logp, old, mask, reward, group):
    """Our preset on the same tensors (the Hybrid's RL part for Hybrid presets)."""
    b = Batch(logp=logp, mask=mask, reward=reward, group=group, logp_old=old)
    return plugin.rl_component(name)(b).loss


def token_rewards(reward, mask):
    out = torch.zeros_like(mask)
    out[torch.arange(len(reward)), mask.sum(1).long() - 1] = reward
    return out


def test_registration_round_trip():
    for name in plugin.loss_presets():
        fn = ca.get_policy_loss_fn("upge_" + name)
        assert fn.upge_preset == name
    for name in plugin.advantage_presets():
        assert ca.get_adv_estimator_fn("upge_" + name).upge_preset == name
    assert "upge_grpo" in plugin.REGISTERED["policy_loss"]
    assert "upge_grpo" in plugin.REGISTERED["adv_estimator"]
    assert "upge_sft" not in plugin.REGISTERED["policy_loss"]       # demonstrations only
    assert "upge_ppo" not in plugin.REGISTERED["adv_estimator"]     # needs a critic: verl's gae
    assert plugin.register() == plugin.REGISTERED                     # idempotent


@pytest.mark.parametrize("name", ["grpo", "dapo", "dr_grpo", "gspo", "cispo", "reinforce", "rloo",
                                  "srft", "hpt", "luffy"])
def test_policy_loss_equals_our_estimator(name):
    logp, old, mask, reward, group = tensors(seed=3)
    b = Batch(logp=logp, mask=mask, reward=reward, group=group, logp_old=old)
    est = plugin.rl_component(name)
    adv = est.advantage(b)
    adv = (adv[:, None] if adv.dim() == 1 else adv) * mask
    loss, metrics = ca.get_policy_loss_fn("upge_" + name)(old, logp, adv, mask.bool(), "token-mean",
                                                          actor_config(), None)
    ref = ours(name, logp, old, mask, reward, group)
    g, g_ref = (torch.autograd.grad(x, logp, retain_graph=True)[0] for x in (loss, ref))
    assert torch.allclose(loss, ref, atol=1e-12)
    assert torch.allclose(g, g_ref, atol=1e-12)
    assert g.abs().sum() > 0
    assert 0.0 <= metrics["actor/pg_clipfrac"] <= 1.0


def test_advantage_estimator_equals_our_part():
    logp, old, mask, reward, group = tensors(seed=4)
    uid = np.array([f"prompt-{int(g)}" for g in group], dtype=object)
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp"):
        adv, ret = ca.get_adv_estimator_fn("upge_" + name)(token_rewards(reward, mask), mask, index=uid)
        b = Batch(logp=logp.detach(), mask=mask, reward=reward, group=group)
        want = estimators.get(name).advantage(b)[:, None] * mask
        assert torch.allclose(adv, want, atol=1e-12) and torch.equal(adv, ret)


def test_grpo_advantage_matches_verl_grpo():
    _, _, mask, reward, group = tensors(seed=5)
    uid = group.numpy()
    ours_adv, _ = ca.get_adv_estimator_fn("upge_grpo")(token_rewards(reward, mask), mask, index=uid)
    theirs, _ = ca.compute_grpo_outcome_advantage(token_rewards(reward, mask), mask, uid)
    assert torch.allclose(ours_adv, theirs, atol=1e-6)


@pytest.mark.parametrize("mode, info_key", [("seq-mean-token-mean", "global_batch_size"),
                                            ("token-mean", "batch_num_tokens")])
def test_micro_batches_and_ranks_give_verl_vanilla_gradient(mode, info_key):
    """Split one mini-batch into 2 'ranks' × 2 micro-batches with verl's global batch info:
    the summed micro-batch gradients averaged over ranks equal verl's vanilla loss gradient on
    the whole batch (ratios stay < 3, so verl's always-on dual clip never binds)."""
    name = {"seq-mean-token-mean": "grpo", "token-mean": "dapo"}[mode]
    logp, old, mask, reward, group = tensors(B=16, seed=6)
    adv, _ = ca.compute_grpo_outcome_advantage(token_rewards(reward, mask), mask, group.numpy())
    whole_cfg = actor_config(eps_high=0.28 if name == "dapo" else 0.2)
    ref, _ = ca.compute_policy_loss_vanilla(old, logp, adv, mask, loss_agg_mode=mode, config=whole_cfg)
    g_ref = torch.autograd.grad(ref, logp)[0]

    info = {"dp_size": 2, "batch_num_tokens": float(mask.sum()), "global_batch_size": 16.0}
    fn = ca.get_policy_loss_fn("upge_" + name)
    grad = torch.zeros_like(logp)
    for rank in range(2):
        for micro in range(2):
            idx = torch.arange(rank * 8 + micro * 4, rank * 8 + micro * 4 + 4)
            lp = logp.detach()[idx].clone().requires_grad_()
            loss, _ = fn(old[idx], lp, adv[idx], mask[idx].bool(), mode, actor_config(**info), None)
            grad[idx] += torch.autograd.grad(loss, lp)[0] / 2        # FSDP averages ranks
    assert torch.allclose(grad, g_ref, atol=1e-12)


def test_rollout_is_weights_scale_each_token():
    logp, old, mask, reward, group = tensors(seed=7)
    adv = torch.randn(logp.shape, dtype=DT) * mask
    w = torch.rand(logp.shape, dtype=DT) * 2
    fn = ca.get_policy_loss_fn("upge_grpo")
    lw, _ = fn(old, logp, adv, mask.bool(), "token-mean", actor_config(), w)
    cfg = actor_config()
    ref, _ = ca.compute_policy_loss_vanilla(old, logp, adv, mask, "seq-mean-token-mean", cfg, w)
    g, g_ref = (torch.autograd.grad(x, logp, retain_graph=True)[0] for x in (lw, ref))
    assert torch.allclose(g, g_ref, atol=1e-12)
