"""Exact invariants of probes-spec §7, MC-vs-exact agreement, w(p,G), and the variance CLI."""
import json
import math

import numpy as np
import pytest
import torch

import estimators
import records
from probes import moments as Mo
from probes import registry as Rg
from probes import variance as V
from probes.testbed import Tree, TreeConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: thread hand-off dominates on 2 shared cores
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tree():
    return Tree()


@pytest.fixture(scope="module")
def thetas(tree):
    return {"base": tree.base_theta(), "mid": tree.checkpoint("mid")}


def by_name(name, K=None):
    probes = Rg.on_policy() + (Rg.stale(K) if K else [])
    return next(p for p in probes if p.name == name)


def exact(ctx, probe):
    est = probe.estimator(ctx.P, ctx.R, ctx.G)
    return Mo.exact_moments(ctx, est, probe.prepare, probe.unit(est, ctx.P, ctx.R, ctx.G))


def row_metrics(tree, ctx, probe):
    m = exact(ctx, probe)
    tg = V.targets(tree, ctx.theta, ctx.G, ctx.prompts)
    return Mo.metrics(m.mean, m.trcov, tg["J"], tg[probe.target], ctx.P * ctx.R * ctx.G, ctx.P * ctx.R), m


@pytest.mark.parametrize("ckpt", ["base", "mid"])
@pytest.mark.parametrize("G", [2, 4, 8])
def test_unbiased_and_drgrpo_scale(tree, thetas, ckpt, G):
    th = thetas[ckpt]
    ctx = Mo.Context(tree, th, th, G, R=2)
    for name in ("reinforce", "rloo"):
        met, _ = row_metrics(tree, ctx, by_name(name))
        assert met["cos"] == pytest.approx(1, abs=1e-12) and met["scale"] == pytest.approx(1, abs=1e-10)
    met, _ = row_metrics(tree, ctx, by_name("dr_grpo"))  # preset Σ/(C·N), measured ×C
    assert met["cos"] == pytest.approx(1, abs=1e-12)
    assert met["scale"] == pytest.approx((G - 1) / G, abs=1e-10)


def test_grpo_no_length_norm_g2_has_no_difficulty_bias(tree, thetas):
    th = thetas["mid"]
    met2, _ = row_metrics(tree, Mo.Context(tree, th, th, 2), by_name("grpo[noLN]"))
    assert met2["cos"] == pytest.approx(1, abs=1e-12)
    met8, _ = row_metrics(tree, Mo.Context(tree, th, th, 8), by_name("grpo[noLN]"))
    assert met8["cos"] < 0.999 and met8["cos_tgt"] == pytest.approx(1, abs=1e-12)  # w(p,8)-weighted
    metl, _ = row_metrics(tree, Mo.Context(tree, th, th, 8), by_name("grpo"))
    assert metl["cos_tgt"] < 0.99  # 1/|y| length normalisation is not parallel to the w-target


@pytest.mark.parametrize("G", [4, 8])
def test_hpt_gamma0_targets_jmu(tree, thetas, G):
    th = thetas["base"]
    met, m = row_metrics(tree, Mo.Context(tree, th, th, G, R=2), by_name("hpt[γ=0,const]"))
    assert met["cos_tgt"] == pytest.approx(1, abs=1e-12)
    assert met["cos"] < 0.5  # SFT term dominates on unsolved prompts
    p = tree.pass_rate(th)[tree.train_idx]
    assert m.gate_frac == pytest.approx(float(((1 - p) ** G).mean()), abs=1e-12)


@pytest.fixture(scope="module")
def stale_ctx(tree, thetas):
    th = thetas["mid"]
    return {K: Mo.Context(tree, th, V.stale_theta(tree, th, K, 1.0), 8, R=1) for K in (1, 16)}


def test_sequence_is_unbiased_and_tis_with_large_cap_equals_it(tree, stale_ctx):
    ctx = stale_ctx[16]
    met, seq = row_metrics(tree, ctx, by_name("seq_is[K=16]", 16))
    assert met["cos"] == pytest.approx(1, abs=1e-12) and met["scale"] == pytest.approx(1, abs=1e-10)
    rho_max = V.off_policy_extras(ctx)["max_rho"] ** tree.cfg.H  # bound on the sequence ratio
    big = Rg.Probe("tis", Rg._tis(rho_max + 1), stale=16, prepare=Rg.sequence_behaviour)
    tis = exact(ctx, big)
    assert torch.allclose(tis.mean, seq.mean, atol=1e-15, rtol=1e-12)
    assert tis.trcov == pytest.approx(seq.trcov, rel=1e-12)
    small = exact(ctx, Rg.Probe("tis", Rg._tis(1.0), stale=16, prepare=Rg.sequence_behaviour))
    assert float((small.mean - seq.mean).norm()) > 1e-3 * float(seq.mean.norm())  # truncation bites


def test_ppo_one_stale_step_equals_unclipped_token_surrogate(tree, stale_ctx):
    ctx = stale_ctx[1]
    rho = torch.exp(ctx.logp_tok - ctx.logp_old_tok)[ctx.prompts][:, tree.mask > 0]
    eps = 0.2
    assert float((rho - 1).abs().max()) < eps
    ppo = exact(ctx, by_name("ppo[eps=0.2,K=1]", 1))
    tok = exact(ctx, by_name("token_is[K=1]", 1))
    assert torch.allclose(ppo.mean, tok.mean, atol=1e-16, rtol=1e-12) and ppo.clip_frac == 0
    ctx16 = stale_ctx[16]
    ppo16, tok16 = exact(ctx16, by_name("ppo[eps=0.2,K=16]", 16)), exact(ctx16, by_name("token_is[K=16]", 16))
    assert ppo16.clip_frac > 0 and float((ppo16.mean - tok16.mean).norm()) > 1e-6


def _grpo_adv_numpy(r, eps=1e-6):
    """Independent GRPO advantage (verl/TRL: Bessel std), rows of r are groups."""
    sd = r.std(axis=1, ddof=1, keepdims=True)
    return np.where(sd > 0, (r - r.mean(axis=1, keepdims=True)) / (sd + eps), 0.0)


@pytest.mark.parametrize("p,G", [(0.05, 8), (0.3, 4), (0.5, 16)])
def test_w_matches_independent_monte_carlo(p, G):
    w = float(Mo.group_weight(estimators.get("grpo").advantage, torch.tensor([p]), G))
    rng = np.random.default_rng(1)
    r = (rng.random((200_000, G)) < p).astype(float)
    A = _grpo_adv_numpy(r)[:, 0]
    hit, miss = A[r[:, 0] == 1], A[r[:, 0] == 0]
    est = hit.mean() - miss.mean()
    se = math.sqrt(hit.var() / len(hit) + miss.var() / len(miss))
    assert abs(est - w) < 4 * se, (est, w, se)
    assert float(Mo.group_weight(estimators.get("grpo").advantage, torch.tensor([p]), 2)) == pytest.approx(2 ** -0.5, rel=1e-5)


def test_mc_agrees_with_exact_for_every_exact_estimator(tree, thetas, stale_ctx):
    th = thetas["mid"]
    ctx = Mo.Context(tree, th, th, 4, R=1)
    checked = 0
    cases = [(ctx, p) for p in Rg.on_policy()] + [(stale_ctx[16], p) for p in Rg.stale(16)]
    for c, probe in cases:
        est = probe.estimator(c.P, c.R, c.G)
        if not Mo.exact_support(est)[0]:
            continue
        u = probe.unit(est, c.P, c.R, c.G)
        ex = Mo.exact_moments(c, est, probe.prepare, u)
        mc = Mo.mc_moments(c, est, 500, seed=7, prepare=probe.prepare, unit=u)
        a = Mo.agreement(ex, mc, tree.grad_J(c.theta))
        assert a["ok"], (probe.name, a)
        checked += 1
    assert checked >= 14
    # the check can fail: a wrong exact mean (scaled by 1.5) is rejected
    bad = Mo.exact_moments(ctx, estimators.get("rloo"))
    bad.mean = bad.mean * 1.3
    mc = Mo.mc_moments(ctx, estimators.get("rloo"), 500, seed=7)
    assert Mo.agreement(Mo.exact_moments(ctx, estimators.get("rloo")), mc, tree.grad_J(th))["ok"]
    assert not Mo.agreement(bad, mc, tree.grad_J(th))["ok"]


def test_batched_mc_equals_unbatched_mc(tree, thetas):
    """Replicates sharing one Batch (group-local estimators) give the very same samples."""
    th = thetas["mid"]
    ctx = Mo.Context(tree, th, th, 4, R=2)
    for name in ("dr_grpo", "grpo"):
        a = Mo.mc_moments(ctx, estimators.get(name), 6, seed=3, chunk=1)
        b = Mo.mc_moments(ctx, estimators.get(name), 6, seed=3, chunk=4)
        assert torch.allclose(a.samples, b.samples, atol=1e-15, rtol=1e-12)


def test_exact_refuses_non_group_local(tree, thetas):
    th = thetas["mid"]
    ctx = Mo.Context(tree, th, th, 4)
    with pytest.raises(Mo.NotExact, match="TokenMean"):
        Mo.exact_moments(ctx, estimators.get("dapo"))
    # an advantage that depends on the other members' lengths is caught by the row guard
    est = estimators.get("rloo").replace(advantage=LengthBaseline())
    with pytest.raises(Mo.NotExact, match="not group-local"):
        Mo.exact_moments(ctx, est)


class LengthBaseline(estimators.parts.GroupNormalised):
    """Â = r − mean length of the group / 10: not a function of the rewards alone."""

    def __call__(self, b, all_reduce=None):
        s, n, _ = estimators.parts.group_moments(b.mask.sum(-1), b.group, b.rollouts)
        return b.reward - s / n / 10


def test_mlp_policy_exact_invariants():
    tb = Tree(TreeConfig(policy="mlp"))
    th = tb.base_theta()
    ctx = Mo.Context(tb, th, th, 4)
    met, _ = row_metrics(tb, ctx, by_name("rloo"))
    assert met["cos"] == pytest.approx(1, abs=1e-10) and met["scale"] == pytest.approx(1, abs=1e-8)


# ----------------------------------------------------------------------------- CLI


def test_cli_bad_input_fails_before_work(capsys):
    assert V.main(["--estimators", "grpo,nope", "--no-records"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "rloo" in err and "valid names" in err
    assert V.main(["--G", "1", "--no-records"]) == 2
    assert "G ≥ 2" in capsys.readouterr().err
    assert V.main(["--G", "6", "--budget", "64", "--no-records"]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert V.main(["--checkpoint", "late", "--no-records"]) == 2


def test_cli_json_and_records(tmp_path, capsys):
    out = tmp_path / "run"
    rc = V.main(["--estimators", "rloo,dr_grpo,seq_is", "--stale", "4", "--G", "4", "--budget", "8",
                 "--format", "json", "--out", str(out)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    names = [r["estimator"] for r in res["rows"]]
    assert names == ["rloo", "dr_grpo", "seq_is[K=4]"]
    rloo = res["rows"][0]
    for col in ("scale", "cos", "cos_tgt", "dir_err", "rel_bias", "trCov", "trCov/a2", "SNR", "B_simple", "P(zero)"):
        assert col in rloo
    assert res["rows"][1]["scale"] == pytest.approx(0.75, abs=1e-10)
    assert "KL" in res["rows"][2] and "clip_frac" in res["rows"][2]
    assert set(res["footer"]["w"]) == {"2", "4", "8", "16", "32", "64"}
    rows, notes = records.read_probes(out, "variance")
    assert not notes
    got = {(r["estimator"], r["metric"]): r["value"] for r in rows}
    assert got[("dr_grpo", "scale")] == pytest.approx(0.75, abs=1e-10)
    assert set(rows[0]) >= set(records.PROBE_FIELDS)
    assert records.read_config(out)["probe"] == "variance"


def test_cli_table_header_footer(capsys):
    assert V.main(["--estimators", "grpo", "--G", "8", "--no-records", "--checkpoint", "base"]) == 0
    out = capsys.readouterr().out
    assert "testbed tree" in out and "all-equal groups: G=8" in out and "‖∇J‖" in out
    assert "GRPO weight w(p,G)" in out and "0.7071" in out
