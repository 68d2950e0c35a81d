"""The variance probe on a run's checkpoints (`probes.runs`): unbiased presets measure as
unbiased against an independent reference, Dr. GRPO's scale is (G−1)/G, the SFT mean gradient is
autograd's gradient of the demos' mean NLL, a LoRA run measures exactly the adapter, and bad input
(no checkpoints, a checkpoint of another model, an estimator needing unrecorded fields) is a clear
error that writes nothing."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

import records
from probes import runs, variance
from training import base, checkpoint, config, policy, stages, task
from training import run as training_run

TINY = base.BaseConfig(hidden_size=32, layers=2, heads=2, kv_heads=2, intermediate_size=64,
                       pretrain_steps=2, pretrain_batch=4)


@pytest.fixture(scope="module")
def threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    old = os.environ.get("UPGE_CACHE")
    os.environ["UPGE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        path = str(base.ensure_base(TINY, log=lambda s: None))
    finally:
        os.environ.pop("UPGE_CACHE") if old is None else os.environ.__setitem__("UPGE_CACHE", old)
    return path


def make_run(root: Path, model_path: str, run_id: str, steps=(10,), lora_r: int = 0, preset: str = "hpt",
             n: int = 4, *extra: str) -> Path:
    """A run directory as `training.run` writes it (config record + checkpoints in the training
    format), with weights moved off the base by a seeded perturbation per step."""
    cfg = config.parse_args([preset, "--model", model_path, "--runs-dir", str(root), "--run-id", run_id,
                             "--n", str(n), "--max-new-tokens", "48", "--lora-r", str(lora_r), *extra])
    run_dir = records.create_run_dir(root, run_id, unique=False)
    w = records.RunWriter(run_dir)
    w.write_config(training_run._config_record(cfg, stages.make_stages(cfg), model_path))
    tok = policy.load_tokenizer(model_path)
    for step in steps:
        model = policy.load_model(model_path, lora_r)
        gen = torch.Generator().manual_seed(step)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad and ("lora_B" in name or not lora_r):
                    p.add_(0.02 * torch.randn(p.shape, generator=gen))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        checkpoint.save(run_dir, step, model, tok, None, opt, sched, {"data": 0, "demos_truncated": 0},
                        keep=10)
    return run_dir


def parity(completions, ground_truth, **kw):
    """A cheap real reward for tests that do not depend on the verifier: 1 on even lengths."""
    return [float(len(c) % 2 == 0) for c in completions]


def cli(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = variance.main([*args, "--threads", "1"])
    return rc, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------- exact identities


def test_sft_mean_gradient_is_autograd_of_the_demos_mean_nll(tiny_base, tmp_path, threads):
    run_dir = make_run(tmp_path, tiny_base, "sft-exact")
    src = dataclasses.replace(runs.run_source(run_dir, "10", P=3), reward_fn=parity)  # SFT reads no reward
    o = runs.RunOptions(estimators="sft", G=2, updates=3, prompts=3, ref=6, ref_chunks=3)
    res = runs.run_probe(src, o)
    (name, vals, se, m), = res["results"][0].rows
    assert name == "sft" and vals["trCov"] == pytest.approx(0.0, abs=1e-20)  # demos: deterministic
    model = runs.load_policy(src, checkpoint.latest(run_dir))
    tok = policy.load_tokenizer(src.model_path)
    nll, count = 0.0, 0
    for e in src.examples:
        p = base.prompt_ids(tok, list(e.messages))
        d = (tok(e.demo, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:src.max_new_tokens]
        logits = model(input_ids=torch.tensor([p + d])).logits[0, len(p) - 1:-1]
        nll = nll + torch.nn.functional.cross_entropy(logits, torch.tensor(d), reduction="sum")
        count += len(d)
    (nll / count).backward()
    want = -torch.cat([p.grad.reshape(-1) for _, p in runs.trainable(model)])
    assert m.mean.shape == want.shape
    torch.testing.assert_close(m.mean, want.to(m.mean.dtype), atol=1e-6, rtol=1e-6)
    # a wrong demonstration set (the first prompt's demo dropped) does not pass
    assert (m.mean - want).abs().max() < 1e-6 < (m.H[0, 1:].sum(0) - want).abs().max()


def test_lora_run_measures_exactly_the_adapter(tiny_base, tmp_path, threads):
    run_dir = make_run(tmp_path, tiny_base, "lora", lora_r=2)
    src = dataclasses.replace(runs.run_source(run_dir, "10", P=2), reward_fn=parity)
    res = runs.run_probe(src, runs.RunOptions(estimators="reinforce", G=2, updates=3, prompts=2, ref=6,
                                              ref_chunks=3))
    adapter = checkpoint.load_file(str(checkpoint.latest(run_dir) / "model" / "adapter_model.safetensors"))
    n_adapter = sum(t.numel() for t in adapter.values())
    full = sum(p.numel() for p in policy.load_model(tiny_base).parameters())
    cr = res["results"][0]
    assert cr.D == n_adapter == cr.rows[0][3].H.shape[-1] and n_adapter < full


# ------------------------------------------------------------------------------- bad input


def test_run_without_checkpoints_is_refused(tiny_base, tmp_path):
    run_dir = make_run(tmp_path, tiny_base, "empty", steps=())
    rc, _, err = cli("--run", str(run_dir))
    assert rc == 2 and "has no checkpoints" in err and str(run_dir) in err
    assert not (run_dir / records.PROBES_DIR).exists()


def test_checkpoint_of_another_model_is_refused(tiny_base, tmp_path):
    run_dir = make_run(tmp_path, tiny_base, "mixed", steps=(10,))
    other = base.BaseConfig(hidden_size=16, layers=1, heads=2, kv_heads=2, intermediate_size=32,
                            pretrain_steps=1, pretrain_batch=2)
    other_path = str(base.ensure_base(other, log=lambda s: None))
    foreign = make_run(tmp_path, other_path, "other", steps=(20,))
    (checkpoint.latest(foreign)).rename(run_dir / records.CHECKPOINTS / "step-000020")
    rc, _, err = cli("--run", str(run_dir), "--estimators", "rloo")
    assert rc == 2 and "step-000020" in err and "another model" in err and "hidden_size 16" in err
    assert not (run_dir / records.PROBES_DIR).exists()


def test_estimator_needing_unrecorded_values_is_refused(tiny_base, tmp_path):
    run_dir = make_run(tmp_path, tiny_base, "novalues")
    rc, _, err = cli("--run", str(run_dir), "--estimators", "rloo,ppo")
    assert rc == 2 and "ppo" in err and "values" in err and "value_head" in err
    assert not (run_dir / records.PROBES_DIR).exists()


def test_missing_step_and_model_without_data(tiny_base, tmp_path):
    run_dir = make_run(tmp_path, tiny_base, "steps")
    rc, _, err = cli("--run", str(run_dir), "--steps", "0,30")
    assert rc == 2 and "no checkpoint of step(s) 30" in err and "available: 0, 10" in err
    rc, _, err = cli("--model", tiny_base)
    assert rc == 2 and "--model needs --data" in err
    rc, _, err = cli("--run", str(run_dir), "--stale", "4")
    assert rc == 2 and "--stale 4" in err and "step=10 needs 6" in err and "available: 0, 10" in err


# --------------------------------------------------------------------- statistics (slow)


@pytest.mark.slow
def test_unbiased_presets_and_dr_grpo_scale_on_the_embedded_base(tmp_path, threads):
    """On the embedded base: REINFORCE and RLOO measure scale 1 and cos 1 within their CIs
    (reference noise included) and no distinguishable bias; Dr. GRPO's scale is (G−1)/G."""
    # prompts of moderate pass rate: level 3 on the arith-offpolicy base (≈ 0.5 at T = 1), a
    # well-defined ∇J (the weak default base passes level 3 too rarely to measure a scale)
    os.environ.pop("UPGE_CACHE", None)  # the real base, cached as the learning tests cache it
    data = tmp_path / "level3.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in task.rows(task.train_problems(3, 4, levels=(3,)), "train")))
    model = str(base.ensure_base(base.config_for("arith-offpolicy")))
    run_dir = make_run(tmp_path, model, "embedded", (10,), 0, "hpt", 2, "--train-data", str(data))
    src = runs.run_source(run_dir, "0", P=4)
    res = runs.run_probe(src, runs.RunOptions(estimators="reinforce,rloo,dr_grpo", G=2, budget=4,
                                              updates=16, prompts=4, ref=256, ref_chunks=8))
    got = {name: (vals, se) for name, vals, se, _ in res["results"][0].rows}
    for name in ("reinforce", "rloo"):
        vals, se = got[name]
        assert abs(vals["scale"] - 1) < 3 * se["scale"], (name, vals["scale"], se["scale"])
        assert not vals["bias_sig"] and not vals["cos_sig"], (name, vals)
    vals, se = got["dr_grpo"]
    assert abs(vals["scale"] - 0.5) < 3 * se["scale"] < abs(vals["scale"] - 1), (vals["scale"], se["scale"])
    assert not vals["cos_sig"]                     # a pure scale: the direction is unbiased


@pytest.mark.slow
def test_unbiased_presets_and_dr_grpo_scale_on_the_lm_testbed(threads):
    """The same on the LM testbed (`probes.lm`, per-sample gradients by vmap), with the run
    probe's noise-aware columns: scale and cos against an 8-chunk RLOO reference."""
    from probes import lm

    res = lm.run_lm("reinforce,rloo,dr_grpo", 2, 24, 512, 60, 0, log=lambda s: None)
    got = {r["estimator"]: r for r in res["rows"]}
    for name in ("reinforce", "rloo"):
        r = got[name]
        assert abs(r["scale_ref"] - 1) < 3 * r["scale_ref_se"], (name, r["scale_ref"], r["scale_ref_se"])
        assert not r["bias_sig"] and not r["cos_sig"], (name, r["bias_z"], r["cos_z"])
    r = got["dr_grpo"]
    assert abs(r["scale_ref"] - 0.5) < 3 * r["scale_ref_se"] < abs(r["scale_ref"] - 1)


def test_paper_figure_reads_the_run_probe_records(tmp_path):
    import fixtures_records as fx
    from paper_figures import estimator_plane
    from paper_figures.common import RunIndex

    run = fx.write_run(tmp_path / "runs", fx.RunSpec("hpt-s0", "hpt", steps=4, eval_every=2))
    fx.write_run_probe(run)
    result = estimator_plane.make(RunIndex(tmp_path / "runs"), tmp_path / "fig")
    assert [p.suffix for p in result.files] == [".png", ".pdf"]
    got = result.data.set_index(["s:step", "estimator"])
    assert sorted(result.data["s:step"].unique()) == list(fx.RUN_PROBE_STEPS)
    assert got.loc[(40, "grpo"), "y"] == pytest.approx(0.8) and got.loc[(0, "grpo"), "x"] == pytest.approx(0.1)


def test_any_model_and_data_file_writes_tidy_records(tiny_base, tmp_path, threads):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in task.rows(task.train_problems(5, 3), "train")))
    src = dataclasses.replace(runs.model_source(tiny_base, str(data), P=3, max_new_tokens=12), reward_fn=parity)
    res = runs.run_probe(src, runs.RunOptions(estimators="rloo,grpo", G=2, updates=3, prompts=3, ref=6,
                                              ref_chunks=3, trcov="groups"))
    out = runs.write(res, tmp_path / "out", ["--model", tiny_base])
    rows, notes = records.read_probes(out, records.PROBE_VARIANCE)
    assert not notes and records.read_config(out)["data"] == str(data)
    table = {(r["estimator"], r["metric"]): r for r in rows}
    for name in ("rloo", "grpo"):
        assert set(runs.COLUMNS) <= {m for e, m in table if e == name}
        assert "grads=per-group,trcov=groups" in table[(name, "trCov")]["setting"]   # both group-local
        assert table[(name, "trCov")]["value"] > 0 and table[(name, "trCov")]["stderr"] > 0
    assert table[("reference", "norm_ref")]["setting"].startswith(f"model={Path(tiny_base).name}")


# ------------------------------------------------------------------- stale rows (--stale K)


def save_nearby(run_dir: Path, model_path: str, src_step, step: int, noise: float) -> None:
    """Checkpoint ``step`` in the training format: checkpoint ``src_step``'s weights (None: the
    initial model's) plus a seeded perturbation of size ``noise`` (0: the same weights under
    another step)."""
    model = policy.load_model(model_path)
    if src_step is not None:
        checkpoint.load_weights(model, run_dir / records.CHECKPOINTS / f"{checkpoint.PREFIX}{src_step:06d}")
    gen = torch.Generator().manual_seed(1000 + step)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen))
    opt = torch.optim.AdamW(model.parameters())
    checkpoint.save(run_dir, step, model, policy.load_tokenizer(model_path), None, opt,
                    torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), {"data": 0, "demos_truncated": 0},
                    keep=10)


STALE_NAMES = "rloo,grpo,ppo[eps=0.2],seq_is"


def test_stale_rows_from_the_same_weights_are_the_on_policy_rows(tiny_base, tmp_path, threads):
    run_dir = make_run(tmp_path, tiny_base, "stale-same", steps=(10,))
    save_nearby(run_dir, tiny_base, 10, 12, 0.0)        # step 12 = step 10's weights
    src = dataclasses.replace(runs.run_source(run_dir, "12", P=2), reward_fn=parity)
    o = runs.RunOptions(estimators=STALE_NAMES, G=2, updates=3, prompts=2, ref=6, ref_chunks=3, stale=(2,))
    res = runs.run_probe(src, o)
    cr = res["results"][0]
    (sr,) = cr.stale
    assert (sr.K, sr.old_step) == (2, 10)
    assert sr.extras == {"KL": 0.0, "max_rho": 1.0, "ESS": 1.0}
    assert [r[0] for r in sr.rows] == [r[0] for r in cr.rows] == STALE_NAMES.split(",")
    for (name, vals, se, m), (_, v0, s0, m0) in zip(sr.rows, cr.rows):
        assert vals["clip_frac"] == 0.0 == v0["clip_frac"], name
        torch.testing.assert_close(m.H, m0.H, rtol=1e-5, atol=1e-7)
        for k in ("scale", "cos", "trCov", "E[cos]"):
            assert vals[k] == pytest.approx(v0[k], rel=1e-4, abs=1e-9, nan_ok=True), (name, k)
    rows = runs.tidy_rows(res)
    stale = [r for r in rows if r["setting"].endswith(",stale=2")]
    assert {r["estimator"] for r in stale} == set(STALE_NAMES.split(","))
    assert all(r["setting"].startswith("step=12,") for r in stale)
    got = {(r["estimator"], r["metric"]): r["value"] for r in stale}
    assert got[("seq_is", "ESS")] == 1.0 and got[("ppo[eps=0.2]", "KL")] == 0.0
    assert not any(r["metric"] in runs.STALE_COLUMNS for r in rows if "stale=" not in r["setting"])


def test_stale_rows_from_an_earlier_checkpoint_see_real_ratios(tiny_base, tmp_path, threads):
    run_dir = make_run(tmp_path, tiny_base, "stale-moved", steps=(10,))
    save_nearby(run_dir, tiny_base, 10, 11, 0.02)
    src = dataclasses.replace(runs.run_source(run_dir, "11", P=2), reward_fn=parity)
    o = runs.RunOptions(estimators=STALE_NAMES, G=2, updates=3, prompts=2, ref=6, ref_chunks=3, stale=(1,))
    res = runs.run_probe(src, o)
    cr = res["results"][0]
    (sr,) = cr.stale
    e = sr.extras
    assert e["KL"] > 0 and e["max_rho"] > 1 and 0 < e["ESS"] < 1
    # the extras are the sample estimates over the rollouts drawn from step 10, scored independently
    old = runs.load_policy(src, run_dir / records.CHECKPOINTS / "step-000010")
    new = runs.load_policy(src, run_dir / records.CHECKPOINTS / "step-000011")
    tok = policy.load_tokenizer(tiny_base)
    pool = runs.sample_pool(old, tok, src, 3 * 2, 6, 0)
    kl, ess = [], []
    for x, p in enumerate(pool.prompts):
        lr = []
        for ids, _ in pool.rollouts[x]:
            with torch.no_grad():
                lo = runs.score_rows(old, [p], [ids], tok.pad_token_id, 1.0)[1].logp[0, :len(ids)].double().sum()
                ln = runs.score_rows(new, [p], [ids], tok.pad_token_id, 1.0)[1].logp[0, :len(ids)].double().sum()
            lr.append(float(ln - lo))
        lr = torch.tensor(lr, dtype=torch.float64)
        kl.append(float(-lr.mean()))
        ess.append(float(torch.exp(lr).mean() ** 2 / torch.exp(2 * lr).mean()))
    assert e["KL"] == pytest.approx(sum(kl) / 2, rel=1e-4) and e["ESS"] == pytest.approx(sum(ess) / 2, rel=1e-4)
    got = {name: vals for name, vals, _, _ in sr.rows}
    assert got["ppo[eps=0.2]"]["clip_frac"] > 0 and got["grpo"]["clip_frac"] > 0
    assert got["rloo"]["clip_frac"] == 0 and got["seq_is"]["clip_frac"] == 0   # no stabilisation mask
    on = {name: vals for name, vals, _, _ in cr.rows}
    assert all(on[n]["clip_frac"] == 0 for n in on)                             # the fresh rows stay on-policy
    assert got["seq_is"]["scale"] != on["seq_is"]["scale"]


def test_stale_cli_prints_and_records_the_stale_rows(tiny_base, tmp_path, threads):
    run_dir = make_run(tmp_path, tiny_base, "stale-cli", steps=(10,))
    save_nearby(run_dir, tiny_base, 10, 11, 0.02)
    rc, out, err = cli("--run", str(run_dir), "--steps", "11", "--stale", "1", "--estimators", "rloo,ppo[eps=0.2]",
                       "--G", "2", "--updates", "3", "--prompts", "2", "--ref", "6", "--ref-chunks", "3")
    assert rc == 0, err
    assert "step=11, stale=1 (rollouts from step 10): KL(old‖new) = " in out and "clip_frac" in out
    rows, notes = records.read_probes(run_dir, records.PROBE_VARIANCE)
    assert not notes
    stale = {(r["estimator"], r["metric"]): r for r in rows if r["setting"].endswith(",stale=1")}
    fresh = {(r["estimator"], r["metric"]) for r in rows if "stale=" not in r["setting"]}
    want = {(e, m) for e in ("rloo", "ppo[eps=0.2]") for m in runs.COLUMNS}
    assert set(stale) == want | {(e, m) for e in ("rloo", "ppo[eps=0.2]") for m in runs.STALE_COLUMNS}
    assert want <= fresh and stale[("rloo", "KL")]["value"] > 0
    assert stale[("rloo", "KL")]["setting"].startswith("step=11,G=2,")


def test_stale_needs_the_earlier_checkpoint_and_a_run(tiny_base, tmp_path):
    run_dir = make_run(tmp_path, tiny_base, "stale-missing", steps=(10, 20))
    rc, _, err = cli("--run", str(run_dir), "--steps", "10,20", "--stale", "10,5", "--estimators", "rloo")
    # 10 − 10 = 0 is the initial model: only 5 and 15 are missing
    assert rc == 2 and "--stale 10,5" in err and "no checkpoint of step(s) 5, 15 " in err
    assert "step=10 needs 5, step=20 needs 15" in err and "available: 0, 10, 20" in err
    assert not (run_dir / records.PROBES_DIR).exists()
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in task.rows(task.train_problems(5, 2), "train")))
    rc, _, err = cli("--model", tiny_base, "--data", str(data), "--stale", "1", "--out", str(tmp_path / "o"))
    assert rc == 2 and "--stale 1" in err and "two checkpoints" in err and "--run" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_stale_sequence_is_stays_unbiased_on_the_embedded_base(tmp_path, threads):
    """On the embedded base, rollouts from the initial model and the gradient at a checkpoint
    one step later (KL(old‖new) ≈ 0.35, ESS ≈ 0.5): sequence-level IS (`seq_is`) still measures
    scale 1 and cos 1 within the CIs against the fresh reference, while PPO's clipped token
    ratio clips tokens."""
    data = tmp_path / "level1.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in task.rows(task.train_problems(3, 4, levels=(1,)), "train")))
    model_path = str(base.ensure_base())
    run_dir = make_run(tmp_path, model_path, "embedded-stale", (), 0, "hpt", 2, "--train-data", str(data))
    save_nearby(run_dir, model_path, None, 1, STALE_NOISE)
    src = runs.run_source(run_dir, "1", P=4)
    res = runs.run_probe(src, runs.RunOptions(estimators="seq_is,ppo[eps=0.2],rloo", G=2, budget=4, updates=32,
                                              prompts=4, ref=512, ref_chunks=8, stale=(1,)))
    (sr,) = res["results"][0].stale
    assert sr.extras["KL"] > 0 and sr.extras["ESS"] < 1
    got = {name: (vals, se) for name, vals, se, _ in sr.rows}
    vals, se = got["seq_is"]
    assert abs(vals["scale"] - 1) < 3 * se["scale"], (vals["scale"], se["scale"])
    assert not vals["bias_sig"] and not vals["cos_sig"], vals
    assert got["ppo[eps=0.2]"][0]["clip_frac"] > 0


STALE_NOISE = 0.01   # weight perturbation of the later checkpoint on the embedded base


def test_every_preset_is_measured_on_a_run_including_those_needing_extra_fields(tiny_base, tmp_path, threads):
    """`--estimators all` measures every preset the run can supply: the entropy mask (π_θold's
    token entropy), OTB (Σ_v π(v)²) and ReMax (the greedy rollout's reward) included; only the
    critic's values (ppo) are missing from a run without a value head."""
    run_dir = make_run(tmp_path, tiny_base, "all-presets")
    src = dataclasses.replace(runs.run_source(run_dir, "10", P=2), reward_fn=parity)
    o = runs.RunOptions(estimators="all", G=2, updates=3, prompts=2, ref=6, ref_chunks=3)
    res = runs.run_probe(src, o)
    names = {name for name, *_ in res["results"][0].rows}
    assert {"entropy_mask", "otb", "remax", "clip_cov", "chord", "pkpo"} <= names
    assert res["skipped"] == ["ppo"]
    for name, vals, se, m in res["results"][0].rows:
        assert torch.isfinite(m.mean).all(), name
    pool = runs.sample_pool(runs.load_policy(src, checkpoint.latest(run_dir)), policy.load_tokenizer(src.model_path),
                            src, 2, 2, seed=0)
    assert len(pool.greedy) == len(src.examples) and set(pool.greedy) <= {0.0, 1.0}
