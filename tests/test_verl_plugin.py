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
        want = estimators.get(name).advantage(b)
        want = (want if want.dim() == 2 else want[:, None]) * mask      # reinforce_pp: per token
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


# ------------------------------------------------------------- engine path: PlanLoss

from tensordict import TensorDict  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402

P = 3   # prompt tokens per row in the engine-format micro-batches


def hybrid_batch(n=4, groups=4, T=8, seed=0):
    """``groups`` prompts, each n rollouts + 1 demonstration (same group id); prefix masks;
    rewards with an all-wrong, an all-right and mixed groups; entropy that requires grad."""
    g = torch.Generator().manual_seed(seed)
    B = groups * (n + 1)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).to(DT)
    logp = (-torch.rand(B, T, generator=g, dtype=DT) * 2 - 0.05).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(B, T, generator=g, dtype=DT)
    entropy = (torch.rand(B, T, generator=g, dtype=DT) + 0.1).requires_grad_()
    reward = torch.randint(0, 2, (B,), generator=g).to(DT)
    group = torch.arange(B) // (n + 1)
    is_demo = torch.arange(B) % (n + 1) == n
    reward[:n] = 0.0                      # prompt 0: every rollout wrong (HPT: SFT branch)
    reward[n + 1:2 * n + 1] = 1.0         # prompt 1: every rollout right
    reward[is_demo] = 1.0
    return Batch(logp=logp, mask=mask, reward=reward, group=group, is_demo=is_demo, logp_old=old,
                 entropy=entropy)


def nested(x, lengths):
    """[b, T] → a jagged nested tensor of the first ``lengths[i]`` entries of each row."""
    return torch.nested.nested_tensor_from_jagged(
        torch.cat([x[i, :int(n)] for i, n in enumerate(lengths)]),
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.long().cumsum(0)]))


def engine_micro_batch(b, idx, fields, dp, tokens):
    """Rows ``idx`` as a verl engine micro-batch (no-padding layout: model outputs are one flat
    stream over prompt + response tokens, shifted by one) and the model output dict."""
    lengths = b.mask[idx].sum(1).long()
    flat = lambda x: torch.cat([torch.cat([x.new_zeros(P - 1), x[i, :n], x.new_zeros(1)])  # noqa: E731
                                for i, n in zip(idx.tolist(), lengths.tolist())])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), (lengths + P).cumsum(0)])
    out = {"log_probs": torch.nested.nested_tensor_from_jagged(flat(b.logp), offsets=offsets)}
    if b.entropy is not None:
        out["entropy"] = torch.nested.nested_tensor_from_jagged(flat(b.entropy), offsets=offsets)
    T = b.mask.shape[1]
    td = {"prompts": torch.ones(len(idx), P, dtype=torch.long),
          "responses": torch.ones(len(idx), T, dtype=torch.long),
          "attention_mask": torch.cat([torch.ones(len(idx), P, dtype=DT), b.mask[idx]], 1).long(),
          "response_mask": nested(b.mask[idx], lengths),
          "old_log_probs": nested(b.logp_old[idx], lengths)}
    for k, v in fields.items():
        if k != "keep":
            td[k] = nested(v[idx], lengths) if v.dim() == 2 else v[idx]
    data = TensorDict(td, batch_size=[len(idx)])
    tu.assign_non_tensor(data, dp_size=dp, batch_num_tokens=tokens)
    return out, data


def engine_gradient(name, b, rows, fields, ranks=2, micro=2):
    """Gradient w.r.t. (logp, entropy) of PlanLoss summed over ``micro`` micro-batches on each of
    ``ranks`` data-parallel ranks, ranks averaged (FSDP), on the rows ``rows``."""
    loss_fn = plugin.PlanLoss(name)
    chunks = rows.chunk(ranks * micro)
    tokens = float(b.mask[rows].sum())
    total = 0.0
    for idx in chunks:
        out, data = engine_micro_batch(b, idx, fields, ranks, tokens)
        loss, _ = loss_fn(model_output=out, data=data, dp_group=None)
        total = total + loss / ranks
    wrt = [b.logp] + ([b.entropy] if b.entropy is not None else [])
    return torch.autograd.grad(total, wrt, allow_unused=True)


@pytest.mark.parametrize("name", ["hpt", "hpt_paper", "luffy", "srft", "grpo", "dapo", "gspo", "sft"])
def test_plan_loss_over_ranks_and_micro_batches_equals_our_estimator(name):
    """Driver plan on the whole step, kept rows split over 2 ranks × 2 micro-batches in verl's
    engine layout (nested tensors, no-padding model output): the gradient equals the preset's own
    on the whole batch, for logp and (for entropy-bonus presets) the entropy."""
    b = hybrid_batch(seed=11)
    est = plugin.trainable(name)
    if not isinstance(est, estimators.Hybrid) and est.rows == "rollouts":
        b = Batch(**{**b.__dict__, "is_demo": torch.zeros_like(b.is_demo)})
    fields = plugin.plan_fields(name, b.reward, b.group, b.mask, b.is_demo)
    ref = est(b).loss
    want = torch.autograd.grad(ref, [b.logp, b.entropy], allow_unused=True)
    rows = fields["keep"].nonzero().flatten()
    got = engine_gradient(name, b, rows, fields)
    assert want[0].abs().sum() > 0
    for g, w in zip(got, want):
        w = torch.zeros_like(b.logp) if w is None else w
        g = torch.zeros_like(b.logp) if g is None else g
        assert torch.allclose(g, w, atol=1e-12)
    if name == "hpt":
        assert not fields["keep"][:4].any() and fields["keep"][4]    # prompt 0: demo only
        assert fields["keep"][5:9].all() and not fields["keep"][9]   # prompt 1: rollouts only


def test_plan_loss_rescales_to_each_mini_batch():
    """k = 2 mini-batches of whole groups: with a token count over all rows (DAPO), each
    mini-batch's PlanLoss gradient equals the preset planned on that mini-batch alone."""
    b = hybrid_batch(seed=12)
    b = Batch(**{**b.__dict__, "is_demo": torch.zeros_like(b.is_demo), "entropy": None})
    fields = plugin.plan_fields("dapo", b.reward, b.group, b.mask, b.is_demo)
    rows = fields["keep"].nonzero().flatten()
    for half in (rows[b.group[rows] < 2], rows[b.group[rows] >= 2]):
        sub = Batch(logp=b.logp[half], mask=b.mask[half], reward=b.reward[half],
                    group=b.group[half], logp_old=b.logp_old[half])
        want = torch.autograd.grad(plugin.trainable("dapo")(sub).loss, b.logp)[0]
        got = engine_gradient("dapo", b, half, fields, ranks=1, micro=2)[0]
        assert torch.allclose(got, want, atol=1e-12) and want.abs().sum() > 0


def test_plan_loss_pickles_and_names_what_is_missing():
    import pickle
    b = hybrid_batch(seed=13)
    fields = plugin.plan_fields("hpt", b.reward, b.group, b.mask, b.is_demo)
    rows = fields["keep"].nonzero().flatten()
    out, data = engine_micro_batch(b, rows, fields, 1, float(b.mask[rows].sum()))
    fn = pickle.loads(pickle.dumps(plugin.PlanLoss("hpt")))
    assert torch.allclose(fn(out, data)[0], plugin.PlanLoss("hpt")(out, data)[0])
    with pytest.raises(ValueError, match="calculate_entropy=True"):
        fn({"log_probs": out["log_probs"]}, data)
    with pytest.raises(KeyError, match="plan_fields"):
        fn(out, data.exclude("upge_coef0"))
    with pytest.raises(ValueError, match="adv_estimator=gae"):
        plugin.PlanLoss("ppo")
    with pytest.raises(estimators.BatchError, match="is_demo"):
        plugin.plan_fields("sft", b.reward, b.group, b.mask, torch.zeros_like(b.is_demo))


def test_plan_loss_scales_advantages_by_rollout_is_weights():
    """verl's truncated-IS weights multiply Â per token (clip decisions unchanged: w ≥ 0)."""
    b = hybrid_batch(seed=14)
    b = Batch(**{**b.__dict__, "is_demo": torch.zeros_like(b.is_demo), "entropy": None})
    fields = plugin.plan_fields("grpo", b.reward, b.group, b.mask, b.is_demo)
    rows = fields["keep"].nonzero().flatten()
    out, data = engine_micro_batch(b, rows, fields, 1, float(b.mask[rows].sum()))
    w = torch.rand(b.mask.shape, dtype=DT, generator=torch.Generator().manual_seed(0)) * 2
    weighted = data.clone()
    weighted["rollout_is_weights"] = nested(w[rows], b.mask[rows].sum(1).long())
    fn = plugin.PlanLoss("grpo")
    got = torch.autograd.grad(fn(out, weighted)[0], b.logp)[0]
    b_w = Batch(**{**b.__dict__})
    est = plugin.trainable("grpo")
    plan = est.plan(b_w)
    plan.adv = plan.adv * w
    want = torch.autograd.grad(est.terms(b_w, plan).sum(), b.logp)[0]
    assert torch.allclose(got, want, atol=1e-12) and not torch.allclose(got, torch.autograd.grad(
        fn(out, data)[0], b.logp)[0])


def test_plan_loss_adds_verls_kl_loss_as_our_kl_part():
    """use_kl_loss in the actor config: verl's low_var_kl (k3) on the rollouts, through our
    KLPenalty — the gradient equals the preset with that KL part, and differs without it."""
    b = hybrid_batch(seed=15)
    ref_logp = b.logp_old + 0.2
    b = Batch(**{**b.__dict__, "is_demo": torch.zeros_like(b.is_demo), "entropy": None, "logp_ref": ref_logp})
    fields = plugin.plan_fields("grpo", b.reward, b.group, b.mask, b.is_demo)
    rows = fields["keep"].nonzero().flatten()
    out, data = engine_micro_batch(b, rows, fields, 1, float(b.mask[rows].sum()))
    data["ref_log_prob"] = nested(ref_logp[rows], b.mask[rows].sum(1).long())
    cfg = ActorConfig(strategy="fsdp", ppo_micro_batch_size_per_gpu=2, rollout_n=4, use_dynamic_bsz=False,
                      use_kl_loss=True, kl_loss_coef=0.05, kl_loss_type="low_var_kl")
    got = torch.autograd.grad(plugin.PlanLoss("grpo", cfg)(out, data)[0], b.logp)[0]
    est = plugin.trainable("grpo").replace(kl=estimators.parts.KLPenalty(coef=0.05, kind="k3"))
    want = torch.autograd.grad(est(b).loss, b.logp)[0]
    plain = torch.autograd.grad(plugin.PlanLoss("grpo")(out, data)[0], b.logp)[0]
    assert torch.allclose(got, want, atol=1e-12) and not torch.allclose(got, plain, atol=1e-6)
    with pytest.raises(KeyError, match="ref_log_prob"):
        plugin.PlanLoss("grpo", cfg)(out, data.exclude("ref_log_prob"))


def test_plan_loss_through_verls_own_padding_conversion_and_dynamic_micro_batches():
    """The mini-batch as verl's engine gets it: a padded TensorDict with the plan's fields,
    converted by verl's ``left_right_2_no_padding`` and split by its ``prepare_micro_batches``
    (dynamic batch size, token-balanced, rows reordered); PlanLoss summed over verl's micro-batches
    gives our estimator's gradient on the whole batch."""
    from verl.workers.engine.utils import prepare_micro_batches
    from verl.workers.utils.padding import left_right_2_no_padding

    b = hybrid_batch(seed=16)
    fields = plugin.plan_fields("hpt", b.reward, b.group, b.mask, b.is_demo)
    want = torch.autograd.grad(plugin.trainable("hpt")(b).loss, [b.logp, b.entropy])
    rows = fields["keep"].nonzero().flatten()
    mask = b.mask[rows]
    B, T = mask.shape
    attention = torch.cat([torch.ones(B, P), mask], 1).long()
    td = {"input_ids": torch.ones(B, P + T, dtype=torch.long), "attention_mask": attention,
          "position_ids": (attention.cumsum(1) - 1).clamp_min(0), "prompts": torch.ones(B, P, dtype=torch.long),
          "responses": torch.ones(B, T, dtype=torch.long), "response_mask": mask.long(),
          "old_log_probs": b.logp_old[rows], "orig": rows}
    td.update({k: v[rows] for k, v in fields.items() if k != "keep"})
    data = left_right_2_no_padding(TensorDict(td, batch_size=[B]))
    tu.assign_non_tensor(data, use_dynamic_bsz=True, max_token_len_per_gpu=2 * (P + T), dp_size=1,
                         batch_num_tokens=float(mask.sum()))
    micro, _ = prepare_micro_batches(data)
    assert len(micro) > 2
    fn, total, seen = plugin.PlanLoss("hpt"), 0.0, []
    for mb in micro:
        idx = mb["orig"]
        seen += idx.tolist()
        out, _ = engine_micro_batch(b, idx, {}, 1, 0.0)     # the model's outputs for these rows
        total = total + fn(out, mb)[0]
    assert sorted(seen) == rows.tolist()
    got = torch.autograd.grad(total, [b.logp, b.entropy])
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-12)


def test_mini_batch_rescale_leaves_constant_normalisers_alone():
    """hpt in a mini-batch holding half the step's tokens: the SFT token mean (and the entropy
    token mean) count tokens, so they double; the RL part's constant Σ/(8192·8) does not change."""
    b = hybrid_batch(seed=17)
    fields = plugin.plan_fields("hpt", b.reward, b.group, b.mask, b.is_demo)
    rows = fields["keep"].nonzero().flatten()
    want = torch.autograd.grad(plugin.trainable("hpt")(b).loss, [b.logp, b.entropy])
    out, data = engine_micro_batch(b, rows, fields, 1, float(b.mask[rows].sum()) / 2)
    got = torch.autograd.grad(plugin.PlanLoss("hpt")(out, data)[0], [b.logp, b.entropy])
    rl, sft = fields["upge_coef0"] != 0, fields["upge_coef1"] != 0
    assert rl.any() and sft.any()
    assert torch.allclose(got[0][rl], want[0][rl], atol=1e-12)          # constant: unchanged
    assert torch.allclose(got[0][sft], 2 * want[0][sft], atol=1e-12)    # token mean: doubled
    assert torch.allclose(got[1], 2 * want[1], atol=1e-12)
