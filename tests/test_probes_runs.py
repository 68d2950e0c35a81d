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
    assert rc == 2 and "--stale 4" in err and "on-policy" in err


# --------------------------------------------------------------------- statistics (slow)


@pytest.mark.slow
def test_unbiased_presets_and_dr_grpo_scale_on_the_embedded_base(tmp_path, threads):
    """On the embedded base: REINFORCE and RLOO measure scale 1 and cos 1 within their CIs
    (reference noise included) and no distinguishable bias; Dr. GRPO's scale is (G−1)/G."""
    data = tmp_path / "level1.jsonl"   # prompts of moderate pass rate (≈ 0.7): a well-defined ∇J
    data.write_text("".join(json.dumps(r) + "\n" for r in task.rows(task.train_problems(3, 4, levels=(1,)), "train")))
    run_dir = make_run(tmp_path, str(base.ensure_base()), "embedded", (10,), 0, "hpt", 2, "--train-data", str(data))
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
