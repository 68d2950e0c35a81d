"""Estimators describe themselves: `map_parts`, what a reduction counts, the plan's returns,
trained rows and gate labels; padding never reaches the loss; the run's gate options."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import estimators
from estimators import Hybrid
from estimators.parts import GAE, GATES, Linear, Power, Switch
from estimators.slots import CONSTANT, ROWS, TOKENS
from test_estimators_identities import batch_for, grad
from training.config import RunConfig, with_gate

PRESETS = sorted(estimators.PRESETS)


def parts_of(est) -> list:
    seen = []
    est.map_parts(lambda slot, part: seen.append((slot, part)) or part)
    return seen


@pytest.mark.parametrize("name", PRESETS)
def test_identity_map_gives_an_equal_estimator(name):
    est = estimators.get(name)
    same = est.map_parts(lambda slot, part: dataclasses.replace(part))   # new objects, equal values
    assert same == est and same.parts() == est.parts()
    slots = {s for s, _ in parts_of(est)}
    expected = {"mask", "denominator", "advantage", "likelihood", "reduction"}
    expected = {f"{c}.{s}" for c in ("rl", "sft") for s in expected} | {"gate"} if isinstance(est, Hybrid) else expected
    assert expected <= slots


@pytest.mark.parametrize("name", PRESETS)
def test_a_constant_change_reaches_every_part_that_has_it(name):
    est = estimators.get(name)
    for slot, part in parts_of(est):
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            if type(value) is not float:
                continue
            new = value + 0.125

            def change(s, p, f=f.name, new=new):
                has = f in {g.name for g in dataclasses.fields(p)} and type(getattr(p, f)) is float
                return dataclasses.replace(p, **{f: new}) if has else p

            changed = est.map_parts(change)
            for (s0, p0), (s1, p1) in zip(parts_of(est), parts_of(changed)):
                has = f.name in {g.name for g in dataclasses.fields(p0)} and type(getattr(p0, f.name)) is float
                assert s0 == s1 and (getattr(p1, f.name) == new if has else p1 == p0), (name, s0, f.name)


def test_reductions_declare_what_they_count():
    counts = {n: [r.counts for r in estimators.get(n).reductions()] for n in ("grpo", "dapo", "dr_grpo", "hpt", "luffy")}
    assert counts == {"grpo": [ROWS], "dapo": [TOKENS], "dr_grpo": [ROWS], "hpt": [CONSTANT, TOKENS],
                      "luffy": [CONSTANT, CONSTANT]}
    assert estimators.get("dr_grpo").reduction.scale == 1024.0


def test_plan_carries_returns_trained_rows_and_gate_labels():
    b = batch_for("ppo", seed=3)
    ppo = estimators.get("ppo")
    assert torch.equal(ppo.plan(b).returns, GAE(1.0, 0.95).advantages_and_returns(b)[1])
    assert estimators.get("grpo").plan(batch_for("grpo", seed=3)).returns is None
    hb = batch_for("hpt", seed=4)
    reward = hb.reward.clone()
    reward[hb.group == 0] = 0.0                       # prompt 0: every rollout wrong → SFT
    reward[hb.group == 1] = 1.0
    plan = estimators.get("hpt").plan(hb.replace(reward=reward))
    labels = plan.labels()
    assert labels[0] == "sft" and labels[1] == "rl"
    rl, sft = plan.parts
    assert torch.equal(plan.trained, (rl.coef != 0) | (sft.coef != 0) | (plan.ent != 0))
    assert not plan.trained[(hb.group == 0) & hb.rollouts].any()


def test_output_kl_is_the_rollout_components():
    b = batch_for("grpo", seed=5)
    b = b.replace(logp_ref=b.logp_old + 0.1)
    kl = estimators.parts.KLPenalty(0.1, "k1")
    assert estimators.get("grpo").with_kl(kl)(b).kl == pytest.approx(0.0 - 0.1 + float(
        ((b.logp - b.logp_old) * b.mask).sum() / b.mask.sum()))
    assert estimators.get("grpo")(b).kl is None
    hb = batch_for("hpt", seed=5)
    hpt = estimators.get("hpt").with_kl(kl)
    assert hpt.rl.kl == kl and hpt.sft.kl is None
    assert hpt(hb.replace(logp_ref=hb.logp_old)).kl is not None


@pytest.mark.parametrize("name", PRESETS)
def test_masked_positions_never_reach_the_loss(name):
    """±1e4 log-probs on padding (finite, so `Batch` accepts them) must not overflow exp."""
    b = batch_for(name, seed=6)
    pad = b.mask == 0
    assert pad.any()
    sign = torch.where(torch.arange(b.logp.numel()).reshape(b.logp.shape) % 2 == 0, 1.0, -1.0).to(b.logp.dtype)
    fill = lambda x, s: torch.where(pad, s * 1e4, x.detach())  # noqa: E731
    logp = fill(b.logp, sign).requires_grad_()
    b = b.replace(logp=logp, logp_old=fill(b.logp_old, -sign), logp_behavior=fill(b.logp_old, sign),
                  logp_ref=fill(b.logp_ref if b.logp_ref is not None else b.logp_old, -sign))
    est = estimators.get(name)
    est = est.with_kl(estimators.parts.KLPenalty(0.1, "k3"))
    out = est(b)
    g = torch.autograd.grad(out.loss, logp)[0]
    assert torch.isfinite(out.loss) and torch.isfinite(g).all(), name
    assert torch.all(g[pad] == 0)
    tis = engines_with_tis(est)(b)
    assert torch.isfinite(torch.autograd.grad(tis.loss, logp)[0]).all()


def engines_with_tis(est):
    from training.rollout import engines

    return engines.with_tis(est, 2.0)


# ------------------------------------------------------------------------------- gates


def test_gate_option_builds_each_gate_with_its_parameters():
    hpt = estimators.get("hpt")
    assert with_gate(hpt, RunConfig()) == hpt
    assert with_gate(hpt, RunConfig(gate="linear", sft_coef=0.5)).gate == Linear(beta=0.5)
    assert with_gate(hpt, RunConfig(gate="power", gate_k=4.0)).gate == Power(k=4.0)
    assert with_gate(hpt, RunConfig(gate_gamma=2)).gate == Switch(gamma=2)
    assert type(with_gate(hpt, RunConfig(gate="always", gate_alpha=0.5)).gate) is GATES["always"]
    assert with_gate(estimators.get("grpo"), RunConfig(gate_gamma=0)) == estimators.get("grpo")


@pytest.mark.parametrize("cfg, match", [
    (RunConfig(gate="linear", gate_gamma=1), "--gate-gamma does nothing for the Linear gate"),
    (RunConfig(gate="always", gate_k=2.0), "--gate-k does nothing for the Always gate"),
    (RunConfig(gate_k=2.0), "--gate-k does nothing for the Switch gate"),
    (RunConfig(gate="nope"), "--gate must be one of switch, linear, power, always"),
    (RunConfig(preset="grpo", gate="linear"), "preset 'grpo' has no gate"),
])
def test_gate_flags_that_do_nothing_are_errors(cfg, match):
    est = estimators.get(cfg.preset)
    with pytest.raises(SystemExit, match=match):
        with_gate(est, cfg)


@pytest.mark.parametrize("gate", sorted(GATES))
def test_every_gate_gives_a_finite_hybrid_gradient(gate):
    b = batch_for("hpt", seed=8)
    est = with_gate(estimators.get("hpt"), RunConfig(gate=gate))
    assert type(est.gate) is GATES[gate]
    g = grad(est, b)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_a_profiles_gate_parameters_apply_only_to_a_gate_that_has_them(tmp_path):
    from training.config import parse_args

    (tmp_path / "config.json").write_text("{}")  # a local model directory (the profile's hub id is offline)
    profile = ["--profile", "paper-qwen2.5-math-1.5b", "--device", "cpu", "--model", str(tmp_path)]
    cfg = parse_args(["hpt", *profile, "--gate", "power"])
    assert cfg.gate_gamma is None and cfg.sft_coef == 1.0               # the profile's γ dropped, β kept
    assert with_gate(estimators.get("hpt"), cfg).gate == Power(beta=1.0)
    explicit = parse_args(["hpt", *profile, "--gate", "power", "--gate-gamma", "1"])
    with pytest.raises(SystemExit, match="--gate-gamma does nothing for the Power gate"):
        with_gate(estimators.get("hpt"), explicit)
