"""Exact-enumeration tests: expectations of estimators on a float64 toy autoregressive policy.

The toy policy: for each prompt x, sequences y ∈ {0..V-1}^H generated token by token from a
tabular softmax whose logits depend on (x, position, previous token). Every G-tuple of sequences
is enumerated, so E[ĝ] is computed with no Monte Carlo error and compared with ∇J computed
independently (autograd of Σ_y π(y)r(y), and w(p, G) from plain binomial sums).
"""
import itertools
import math

import pytest
import torch

import estimators
from estimators import Batch
from estimators.parts import ConstantNormaliser, SeqMeanTokenSum


V, H = 2, 3
SEQS = torch.tensor(list(itertools.product(range(V), repeat=H)))  # [S, H]


def make_theta(seed=0, prompts=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(prompts, H, V + 1, V, generator=g, dtype=torch.float64).requires_grad_()


def token_logp(theta, x, seqs):
    """[S, H] log π(y_t | x, y_{t-1}) (previous token V means 'start')."""
    prev = torch.cat([torch.full((seqs.shape[0], 1), V), seqs[:, :-1]], 1)
    logits = theta[x, torch.arange(H)[None, :], prev]            # [S, H, V]
    return torch.log_softmax(logits, -1).gather(-1, seqs[..., None])[..., 0]


def reward(x, seqs):
    """Binary reward: prompt 0 wants y_0 == y_2; prompt 1 wants all ones."""
    return ((seqs[:, 0] == seqs[:, 2]) if x == 0 else (seqs == 1).all(1)).to(torch.float64)


def true_grad(theta, x):
    lp = token_logp(theta, x, SEQS).sum(1)
    J = (lp.exp() * reward(x, SEQS)).sum()
    return torch.autograd.grad(J, theta)[0], float(J.detach())


def expected_estimate(est, theta, x, G):
    """E[ĝ] over all G-tuples of sequences, each tuple one group, weighted by its probability."""
    tuples = torch.tensor(list(itertools.product(range(len(SEQS)), repeat=G)))   # [K, G]
    lp_seq = token_logp(theta, x, SEQS)                                           # [S, H]
    seq_prob = lp_seq.sum(1).exp().detach()
    weight = seq_prob[tuples].prod(1)                                             # [K]
    rows = tuples.reshape(-1)
    batch = Batch(logp=lp_seq[rows], mask=torch.ones(len(rows), H, dtype=torch.float64), reward=reward(x, SEQS)[rows],
                  group=torch.arange(len(tuples)).repeat_interleave(G))
    terms = est.terms(batch).sum(1)                        # each group's terms sum to loss_g / K
    surrogate = (terms * weight.repeat_interleave(G)).sum() * len(tuples)
    return -torch.autograd.grad(surrogate, theta)[0]       # loss is minimised: ĝ = −∇loss


def w_grpo(p, G, eps=1e-6):
    """w(p, G) = h(1) − h(0) with h(r) = E[A_1 | r_1 = r], from binomial sums (std with ddof 1)."""
    def h(r1):
        total = 0.0
        for k in range(G):                     # k successes among the other G−1
            prob = math.comb(G - 1, k) * p ** k * (1 - p) ** (G - 1 - k)
            rs = [r1] + [1] * k + [0] * (G - 1 - k)
            mean = sum(rs) / G
            std = math.sqrt(sum((r - mean) ** 2 for r in rs) / (G - 1))
            total += prob * (r1 - mean) / (std + eps)
        return total
    return h(1) - h(0)


@pytest.mark.parametrize("name", ["reinforce", "rloo"])
@pytest.mark.parametrize("G", [2, 3])
def test_unbiased_estimators_equal_true_gradient(name, G):
    theta = make_theta(1)
    for x in (0, 1):
        g, _ = true_grad(theta, x)
        m = expected_estimate(estimators.get(name), theta, x, G)
        assert torch.allclose(m, g, atol=1e-10, rtol=0), (name, x, (m - g).abs().max())


@pytest.mark.parametrize("G", [2, 3])
def test_dr_grpo_is_scaled_true_gradient(G):
    theta = make_theta(2)
    est = estimators.get("dr_grpo")
    C = est.reduction.constant
    for x in (0, 1):
        g, _ = true_grad(theta, x)
        # on-policy: logp_old = logp.detach(), so the clip never binds; Σ_t / (C·N)
        m = expected_estimate(est, theta, x, G)
        assert torch.allclose(m * C, (G - 1) / G * g, atol=1e-10, rtol=0)


@pytest.mark.parametrize("G", [2, 3, 4])
def test_grpo_expectation_is_w_times_grad_p(G):
    theta = make_theta(3)
    est = estimators.get("grpo")            # seq-mean-token-mean: fixed length H ⇒ factor 1/H
    for x in (0, 1):
        g, p = true_grad(theta, x)
        m = expected_estimate(est, theta, x, G)
        assert torch.allclose(m, w_grpo(p, G) / H * g, atol=1e-10, rtol=0), (x, p)
    if G == 2:
        assert abs(w_grpo(0.3, 2) - w_grpo(0.8, 2)) < 1e-5    # no difficulty bias at G = 2


def test_grpo_without_length_normalisation_differs_only_by_scale():
    theta = make_theta(4)
    est = estimators.get("grpo").replace(reduction=SeqMeanTokenSum())
    g, p = true_grad(theta, 0)
    assert torch.allclose(expected_estimate(est, theta, 0, 3), w_grpo(p, 3) * g, atol=1e-10, rtol=0)


def test_constant_normaliser_scale_is_exact():
    theta = make_theta(5)
    a = expected_estimate(estimators.get("dr_grpo").replace(reduction=ConstantNormaliser(7.0)), theta, 1, 2)
    b = expected_estimate(estimators.get("dr_grpo").replace(reduction=ConstantNormaliser(1.0)), theta, 1, 2)
    assert torch.allclose(a * 7.0, b, atol=1e-12, rtol=0)


# ------------------------------------------------- baselines from verl's catalogue (ReMax, OTB)


def expected_estimate_with(est, theta, x, G, **fields):
    """`expected_estimate` with extra Batch fields, each a function (theta, x) → per-sequence
    values [S] or [S, H] (indexed like the enumerated rows)."""
    tuples = torch.tensor(list(itertools.product(range(len(SEQS)), repeat=G)))
    lp_seq = token_logp(theta, x, SEQS)
    weight = lp_seq.sum(1).exp().detach()[tuples].prod(1)
    rows = tuples.reshape(-1)
    batch = Batch(logp=lp_seq[rows], mask=torch.ones(len(rows), H, dtype=torch.float64),
                  reward=reward(x, SEQS)[rows], group=torch.arange(len(tuples)).repeat_interleave(G),
                  **{k: f(theta, x)[rows] for k, f in fields.items()})
    surrogate = (est.terms(batch).sum(1) * weight.repeat_interleave(G)).sum() * len(tuples)
    return -torch.autograd.grad(surrogate, theta)[0]


def greedy_reward(theta, x):
    """[S] the reward of the prompt's greedy (argmax) sequence, the same for every row."""
    prev, seq = V, []
    for t in range(H):
        prev = int(theta[x, t, prev].argmax())
        seq.append(prev)
    return reward(x, torch.tensor([seq])).expand(len(SEQS))


def sum_pi_squared(theta, x):
    """[S, H] Σ_v π(v | x, y_{t−1})² at each position of each sequence."""
    prev = torch.cat([torch.full((SEQS.shape[0], 1), V), SEQS[:, :-1]], 1)
    p = torch.softmax(theta[x, torch.arange(H)[None, :], prev], -1)
    return (p ** 2).sum(-1).detach()


def same_policy(theta, x):
    """π_ref = π_θ: the KL in ReMax's reward is 0, so its target is ∇J."""
    return token_logp(theta, x, SEQS).detach()


@pytest.mark.parametrize("G", [1, 2, 3])
def test_remax_greedy_baseline_is_unbiased(G):
    """E[(r − r(greedy))·∇log π] = ∇J: the greedy rollout does not depend on the sample. The
    token-mean over fixed-length (H) rows puts the estimate on the scale ∇J / H."""
    theta = make_theta(1)
    est = estimators.get("remax")
    for x in (0, 1):
        g, _ = true_grad(theta, x)
        m = expected_estimate_with(est, theta, x, G, reward_baseline=greedy_reward, logp_ref=same_policy)
        assert torch.allclose(m * H, g, atol=1e-10, rtol=0), (x, (m * H - g).abs().max())
        assert float(greedy_reward(theta, x)[0]) in (0.0, 1.0)


@pytest.mark.parametrize("G", [2, 3])
def test_optimal_token_baseline_leave_one_out_is_unbiased_verl_s_is_not(G):
    """With each row's baseline taken from the other rows only, OTB is exactly unbiased for ∇J.
    verl's OTB (the ``otb`` preset) includes the row itself in B_t and shrinks the update —
    by a factor near (G−1)/G, not exactly it (the weights W_t depend on the row)."""
    from estimators.baselines import OptimalTokenBaseline

    theta = make_theta(1)
    verl_otb = estimators.get("otb")
    loo = verl_otb.replace(advantage=OptimalTokenBaseline(leave_one_out=True))
    for x in (0, 1):
        g, _ = true_grad(theta, x)
        m = expected_estimate_with(loo, theta, x, G, sum_pi_squared=sum_pi_squared)
        assert torch.allclose(m * H, g, atol=1e-10, rtol=0), (x, (m * H - g).abs().max())
        biased = expected_estimate_with(verl_otb, theta, x, G, sum_pi_squared=sum_pi_squared) * H
        shrink = float((biased * g).sum() / (g * g).sum())
        assert 0.3 < shrink < 0.8 and (biased - g).abs().max() > 1e-2, shrink
