"""Identities between estimators, partition invariance, per-preset sanity and bad input."""
import pytest
import torch
import torch.nn.functional as F

import estimators
from estimators import Batch, BatchError, Estimator, Hybrid
from estimators.parts import (Always, Clip, Current, GroupNormalised, NoClip, Old, Plain,
                              SeqMeanTokenMean, SeqMeanTokenSum, SequenceGeometric, TruncatedIS)

DT = torch.float64


def random_batch(B=12, T=7, G=4, seed=0, demos=False, stale=0.3, values=False, ragged=True):
    """Random rows in groups of G; with ``demos`` the last row of every group is a demonstration."""
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g, dtype=DT) * 2 - 0.05).requires_grad_()
    mask = torch.ones(B, T, dtype=DT)
    if ragged:
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        mask = (torch.arange(T)[None] < lengths[:, None]).to(DT)
    return Batch(
        logp=logp, mask=mask,
        reward=torch.randint(0, 2, (B,), generator=g).to(DT),
        group=torch.arange(B) // G,
        is_demo=(torch.arange(B) % G == G - 1) if demos else None,
        logp_old=(logp.detach() + stale * torch.randn(B, T, generator=g, dtype=DT)),
        values=torch.randn(B, T, generator=g, dtype=DT) if values else None,
    )


def batch_for(name, **kw):
    est = estimators.get(name)
    b = random_batch(demos=isinstance(est, Hybrid) or est.rows != "rollouts",
                     values="values" in est.needs, **kw)
    g = torch.Generator().manual_seed(b.size)
    extra = {"logp_ref": lambda: b.logp_old,                                   # π_ref = π_θold
             "entropy": lambda: torch.rand(b.logp.shape, generator=torch.Generator().manual_seed(
                 kw.get("seed", 0) + 1000), dtype=DT) * 3,                     # π_θold's token entropy
             "reward_baseline": lambda: torch.rand(b.size, generator=g, dtype=DT),
             "sum_pi_squared": lambda: torch.exp(b.logp_old) ** 2 + 0.5 * torch.rand(b.logp.shape, generator=g, dtype=DT)}
    return b.replace(**{f: extra[f]() for f in est.needs if f in extra})


def grad(est, b, plan=None):
    return torch.autograd.grad(est(b, plan).loss, b.logp, allow_unused=True)[0]


# ---------------------------------------------------------------------------- identities


def test_sft_equals_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 6, 11, generator=g, dtype=DT, requires_grad=True)
    target = torch.randint(0, 11, (5, 6), generator=g)
    mask = (torch.rand(5, 6, generator=g) > 0.2).to(DT)
    mask[:, 0] = 1
    logp = torch.log_softmax(logits, -1).gather(-1, target[..., None])[..., 0]
    b = Batch(logp=logp, mask=mask, reward=torch.zeros(5, dtype=DT), group=torch.arange(5),
              is_demo=torch.ones(5, dtype=torch.bool))
    ours = torch.autograd.grad(estimators.get("sft")(b).loss, logits)[0]
    ignore = target.masked_fill(mask == 0, -100)
    ref = torch.autograd.grad(F.cross_entropy(logits.reshape(-1, 11), ignore.reshape(-1),
                                              ignore_index=-100), logits)[0]
    assert torch.allclose(ours, ref, atol=1e-12)


def min_form(b, adv, eps_low, eps_high):
    """−(1/N) Σ_i (1/|τ_i|) Σ_t min(ρA, clip(ρ)A): PPO/GRPO's published surrogate."""
    ratio = torch.exp(b.logp - b.logp_old)
    a = adv[:, None]
    obj = torch.minimum(ratio * a, ratio.clamp(1 - eps_low, 1 + eps_high) * a)
    return -((obj * b.mask).sum(1) / b.mask.sum(1)).mean()


@pytest.mark.parametrize("eps", [(0.2, 0.2), (0.2, 0.28), (0.05, 0.1)])
def test_clip_mask_form_equals_min_form(eps):
    b = random_batch(stale=0.5, seed=3)
    est = estimators.get("grpo").replace(mask=Clip(*eps))
    adv = est.advantage(b)
    ref = torch.autograd.grad(min_form(b, adv, *eps), b.logp)[0]
    assert torch.allclose(grad(est, b), ref, atol=1e-12)
    assert est(b).stats["clip_fraction"] > 0.05           # the clip really binds here


def test_grpo_on_policy_equals_reinforce_with_same_advantage():
    b = random_batch(stale=0.0, seed=4)
    b = b.replace(logp_old=b.logp.detach())
    grpo = estimators.get("grpo")
    reinforce_like = Estimator(NoClip(), Current(), grpo.advantage, Plain(), SeqMeanTokenMean())
    assert torch.allclose(grad(grpo, b), grad(reinforce_like, b), atol=1e-12)


def test_gspo_on_length_one_sequences_equals_grpo():
    b = random_batch(T=1, stale=0.3, seed=5, ragged=False)
    grpo = estimators.get("grpo")
    gspo = estimators.get("gspo").replace(mask=grpo.mask)
    assert torch.allclose(grad(gspo, b), grad(grpo, b), atol=1e-12)


def test_tis_with_large_cap_is_plain_importance_sampling():
    b = random_batch(seed=6)
    b = b.replace(logp_behavior=b.logp_old + 0.1 * torch.randn_like(b.logp_old))
    tis = estimators.get("grpo").replace(denominator=TruncatedIS(Old(), cap=1e9), mask=NoClip())
    w = torch.exp(b.logp_old - b.logp_behavior)
    ref = estimators.get("grpo").replace(mask=NoClip())
    adv = ref.advantage(b)[:, None]
    loss = -((torch.exp(b.logp - b.logp_old) * w * adv * b.mask).sum(1) / b.mask.sum(1)).mean()
    assert torch.allclose(grad(tis, b), torch.autograd.grad(loss, b.logp)[0], atol=1e-12)
    capped = grad(estimators.get("grpo").replace(denominator=TruncatedIS(Old(), cap=0.5)), b)
    assert not torch.allclose(capped, grad(tis, b))


def test_hybrid_with_alpha_one_beta_zero_equals_its_rl_estimator():
    b = random_batch(demos=True, seed=7)
    grpo = estimators.get("grpo")
    hybrid = Hybrid(rl=grpo, sft=estimators.get("sft"), gate=Always(1.0, 0.0))
    rollouts = b.rollouts.nonzero()[:, 0]
    sub = b.select(rollouts)
    g_h = grad(hybrid, b)
    assert torch.allclose(g_h[rollouts], grad(grpo, sub), atol=1e-12)
    assert torch.all(g_h[b.is_demo] == 0)


def test_hpt_on_an_all_wrong_group_is_exactly_sft_on_the_demo():
    b = random_batch(demos=True, seed=8)
    b = b.replace(reward=torch.zeros_like(b.reward))          # every rollout fails: c = 0 ≤ γ
    hpt = estimators.get("hpt")
    out = hpt(b)
    demos = b.is_demo.nonzero()[:, 0]
    sft_grad = grad(estimators.get("sft"), b.select(demos))
    g = grad(hpt, b)
    assert torch.allclose(g[demos], sft_grad, atol=1e-12)
    assert torch.all(g[b.rollouts] == 0)
    assert out.stats["gate/sft_fraction"] == 1.0
    assert all(d["alpha"] == 0 and d["beta"] == 1 for d in out.gate)


def test_hpt_gate_counts_gamma_out_of_n():
    b = random_batch(B=12, G=4, demos=True, seed=9)           # 3 rollouts + 1 demo per group
    reward = torch.tensor([1, 0, 0, 0,  1, 1, 0, 0,  0, 0, 0, 0], dtype=DT)
    b = b.replace(reward=reward)
    for gamma, want in [(0, [0, 0, 1]), (1, [1, 0, 1]), (2, [1, 1, 1])]:
        hpt = estimators.get("hpt").replace(gate=estimators.parts.Switch(gamma=gamma))
        got = [d["beta"] > 0 for d in hpt(b).gate]
        assert got == [bool(w) for w in want], gamma


# --------------------------------------------------------------------- partition invariance


def all_reduced_plans(est, shards):
    """Plan each shard on its own thread, as one rank each, with an ``all_reduce`` that is a
    real collective: every rank waits for the others and gets the sum of their tensors (so a
    plan whose later reductions depend on earlier results, e.g. a bisection, is simulated too)."""
    import threading

    n = len(shards)
    barrier, slots, plans, errors = threading.Barrier(n, timeout=60), [None] * n, [None] * n, []

    def rank(r):
        def all_reduce(t):
            slots[r] = t.clone()
            barrier.wait()
            total = sum(slots[1:], slots[0].clone())
            barrier.wait()
            return total
        try:
            plans[r] = est.plan(shards[r], all_reduce=all_reduce)
        except Exception as e:  # noqa: BLE001 — re-raised below, the other rank is released
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return plans


@pytest.mark.parametrize("name", sorted(estimators.PRESETS))
def test_partition_invariance(name):
    est = estimators.get(name)
    b = batch_for(name, B=16, G=4, seed=11)
    full = grad(est, b)
    plan = est.plan(b)
    # 4 micro-batches, interleaved so every micro-batch splits groups
    micro = torch.zeros_like(full)
    for k in range(4):
        idx = torch.arange(k, 16, 4)
        micro[idx] += torch.autograd.grad(est(b.select(idx), plan.select(idx)).loss, b.logp)[0][idx]
    assert torch.allclose(micro, full, atol=1e-12), "micro-batches changed the gradient"
    # 2 data-parallel ranks, whole groups per rank, normaliser all-reduced
    shards = [b.select(torch.arange(0, 8)), b.select(torch.arange(8, 16))]
    ranks = torch.zeros_like(full)
    for r, (s, p) in enumerate(zip(shards, all_reduced_plans(est, shards))):
        ranks[8 * r:8 * r + 8] += torch.autograd.grad(est(s, p).loss, b.logp)[0][8 * r:8 * r + 8]
    assert torch.allclose(ranks, full, atol=1e-12), "data-parallel ranks changed the gradient"


# ------------------------------------------------------------------------- every preset


@pytest.mark.parametrize("name", sorted(estimators.PRESETS))
def test_preset_is_finite_and_nan_free_on_degenerate_groups(name):
    est = estimators.get(name)
    b = batch_for(name, seed=12)
    assert torch.isfinite(grad(est, b)).all()
    for reward in (torch.ones_like(b.reward), torch.zeros_like(b.reward)):   # all-equal groups
        g = grad(est, b.replace(reward=reward))
        assert torch.isfinite(g).all()
    single = batch_for(name, B=4, G=1, seed=13) if not isinstance(est, Hybrid) and est.rows == "rollouts" else None
    if single is not None:                                                    # one-member groups
        assert torch.isfinite(grad(est, single)).all()


# sft and chord train the demonstration with Â ≡ 1 whatever the rewards (chord's rollout rows:
# tests/test_estimators_catalogue_trl.py::test_chord_zero_advantage_trains_only_the_demonstrations)
@pytest.mark.parametrize("name", sorted(set(estimators.PRESETS) - {"sft", "chord"}))
def test_zero_advantage_gives_zero_gradient(name):
    est = estimators.get(name)
    b = batch_for(name, seed=14)
    # every reward equal (all correct, so the HPT gate picks RL): Â ≡ 0; PPO: V ≡ 0 and r ≡ 0
    # otb: r ≡ 0 (the strictly longest rollout's tail beyond the second longest has no baseline)
    reward = torch.zeros_like(b.reward) if name in ("ppo", "reinforce", "otb") else torch.ones_like(b.reward)
    b = b.replace(reward=reward, values=torch.zeros_like(b.logp) if b.values is not None else None)
    if b.reward_baseline is not None:            # ReMax: the greedy rollout earned as much
        b = b.replace(reward_baseline=reward)
    if getattr(est, "kl", None) is not None:     # a penalty toward π_θold (DRO, KL-Cov) pulls
        b = b.replace(logp_old=b.logp.detach())   # whenever θ ≠ θ_old: take θ = θ_old
    g = grad(est, b)
    assert g is None or torch.all(g == 0), name


@pytest.mark.parametrize("name", sorted(set(estimators.PRESETS) - {"sft"}))
def test_empty_mask_gives_zero_gradient(name):
    est = estimators.get(name)
    b = batch_for(name, seed=15)
    mask = b.mask.clone()
    mask[b.rollouts] = 0                     # no rollout token may move
    b = b.replace(mask=mask)
    g = grad(est, b)
    assert torch.all(g[b.rollouts] == 0) and torch.isfinite(g).all()


# ----------------------------------------------------------------------------- bad input


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match="valid names: .*dapo.*grpo"):
        estimators.get("grpo2")


@pytest.mark.parametrize("change, match", [
    (dict(mask=torch.ones(12, 6)), r"Batch.mask has shape \(12, 6\), expected \(12, 7\)"),
    (dict(reward=torch.ones(11)), r"Batch.reward has shape \(11,\)"),
    (dict(group=torch.zeros(12)), "Batch.group must be an integer"),
])
def test_batch_rejects_bad_shapes(change, match):
    b = random_batch()
    with pytest.raises(BatchError, match=match):
        b.replace(**change)


def test_batch_rejects_non_finite_values():
    b = random_batch()
    r = b.reward.clone()
    r[3] = float("nan")
    with pytest.raises(BatchError, match=r"Batch.reward is not finite at index \(3,\)"):
        b.replace(reward=r)
    lp = b.logp.detach().clone()
    lp[2, 0] = float("-inf")
    with pytest.raises(BatchError, match=r"Batch.logp is not finite at index \(2, 0\)"):
        b.replace(logp=lp)


def test_batch_checks_response_tokens_only_and_the_log_probability_range():
    b = random_batch()                         # ragged: some rows end in padding
    pad, tok = (tuple(int(i) for i in (b.mask == v).nonzero()[0]) for v in (0, 1))
    for name in ("logp", "logp_old", "logp_ref"):
        v = getattr(b, name, None)
        v = (b.logp if v is None else v).detach().clone()
        v[pad] = float("-inf")                 # padding may hold anything
        b.replace(**{name: v})
    lp = b.logp.detach().clone()
    lp[pad] = 5.0
    b.replace(logp=lp)
    lp[tok] = 0.25
    with pytest.raises(BatchError, match=rf"Batch.logp is > 0 .* at index \({tok[0]}, {tok[1]}\)"):
        b.replace(logp=lp)
    est = estimators.get("grpo")                # bool rewards are 0/1
    assert torch.equal(grad(est, b.replace(reward=b.reward.bool())), grad(est, b))


def test_presets_reject_what_they_cannot_use():
    with pytest.raises(BatchError, match="Batch.is_demo: grpo trains on on-policy rollouts only and has no use for the 3 demonstration"):
        estimators.get("grpo")(random_batch(demos=True))
    with pytest.raises(BatchError, match="Batch.values is required by ppo"):
        estimators.get("ppo")(random_batch())
    b = random_batch(demos=True)
    mask = b.mask.clone()
    mask[3] = 0                                # the first demonstration (row 0 of the demos) is empty
    with pytest.raises(BatchError, match="row 0 has no response tokens"):
        estimators.get("sft")(b.replace(mask=mask).select(b.is_demo.nonzero()[:, 0]).replace(
            is_demo=torch.ones(3, dtype=torch.bool)))


def test_stats_and_parts_are_readable():
    out = estimators.get("dapo")(random_batch(stale=0.5))
    assert set(out.stats) >= {"clip_fraction", "ratio_max", "adv_mean"}
    parts = estimators.get("hpt").parts()
    assert parts["gate"] == "Switch(gamma=0, beta=1.0)" and "GroupNormalised" in parts["rl.advantage"]


def test_method_table_in_docs_is_generated_from_presets():
    from pathlib import Path

    from estimators.table import markdown
    text = markdown()
    for name in estimators.PRESETS:
        assert f"| `{name}` |" in text
    assert "(r − mean_G r) / std_G r" in text and "1_clip(ε_low=0.2, ε_high=0.28)" in text
    doc = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
    assert doc.read_text(encoding="utf-8") == text, "run: python -m estimators.table > docs/methods.md"


@pytest.mark.parametrize("c, chunk", [(0.95, 4), (1.0, 3), (0.5, 256)])
def test_discounted_reverse_cumsum_matches_a_loop(c, chunk):
    from estimators.parts import discounted_reverse_cumsum
    x = torch.randn(3, 11, dtype=DT, generator=torch.Generator().manual_seed(0))
    ref, run = torch.zeros_like(x), torch.zeros(3, dtype=DT)
    for t in reversed(range(11)):
        run = x[:, t] + c * run
        ref[:, t] = run
    assert torch.allclose(discounted_reverse_cumsum(x, c, chunk=chunk), ref, atol=1e-12)
