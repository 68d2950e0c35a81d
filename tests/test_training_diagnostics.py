"""Live gradient diagnostics (`training.diagnostics`) through the real training step: the noise
estimates against per-micro-batch gradients materialised one by one, an unchanged update, the
SFT/RL cosine on constructed updates, and the realised prompt weights against the exact w(p, G)."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
import torch

import estimators
import records
from estimators import Batch, Estimator, Hybrid, parts as Pt
from probes.moments import group_weight
from records import gradients
from training import base, data, diagnostics, run, task
from training.batching import Row, Rollouts, StepMetrics, _select_packed
from training.distributed import SingleProcess
from training.policy import pack, score

torch.set_num_threads(1)
# the tests' optimizer records the gradient instead of stepping (the scheduler notices)
pytestmark = pytest.mark.filterwarnings("ignore:Seems like `optimizer.step")
TINY = base.BaseConfig(hidden_size=16, layers=1, heads=2, kv_heads=2, intermediate_size=16,
                       pretrain_steps=1, pretrain_batch=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    mp = pytest.MonkeyPatch()
    mp.setenv("UPGE_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        return str(base.ensure_base(TINY, log=lambda s: None))
    finally:
        mp.undo()


def trainer(model_dir, tmp_path, preset="grpo", *extra, reward_fn=None):
    """A Trainer whose optimizer step records the gradient instead of applying it (the weights
    stay put, so every update of a test sees the same model)."""
    cfg = run.parse_args([preset, "--model", model_dir, "--runs-dir", str(tmp_path), "--steps", "2",
                          "--prompts-per-step", "4", "--n", "4", "--max-new-tokens", "8",
                          "--progress", "false", "--threads", "1", "--grad-clip", "1e9",
                          "--max-grad-norm", "1e9", "--eval-k", "1", *extra])
    t = run.build(cfg, reward_fn=reward_fn or alternating, log=lambda s: None)
    t.grads = []
    t.optimizer.step = lambda: t.grads.append([p.grad.detach().clone() for p in t.params])
    return t


def alternating(completions, ground_truth, **kw):
    return [float(i % 3 == 0) for i in range(len(completions))]


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads]).double()


def micro_gradients(t, stage, rollouts):
    """Each micro-batch's gradient, materialised with autograd on the step's own losses."""
    rows = rollouts.rows
    packed = pack([r.prompt_ids for r in rows], [r.response_ids for r in rows], t.tok.pad_token_id)
    m = StepMetrics()
    sb = t.old_batch(stage, rollouts, packed, t.one_pass(stage, 1, rollouts), m)
    mini = t.mini_batch(stage, sb, torch.arange(len(rows)), m)
    out = []
    for micro in t.backend.micro_batches(mini.trained, t.cfg.micro_batch, mini.batch.is_demo):
        s = score(t.model, _select_packed(mini.packed, micro), temperature=t.cfg.temperature)
        loss = t.micro_loss(mini, micro, s, m)
        g = torch.autograd.grad(loss, t.params, allow_unused=True)
        out.append((len(micro), flat([torch.zeros_like(p) if x is None else x for x, p in zip(g, t.params)])))
    return out


@pytest.mark.parametrize("lora", [False, True])
def test_live_noise_scale_and_snr_equal_mccandlish_on_materialised_micro_batch_gradients(model_dir, tmp_path, lora):
    extra = ("--micro-batch", "4") + (("--lora-r", "2") if lora else ())
    t = trainer(model_dir, tmp_path, "grpo", *extra)
    stage = t.stages[0]
    rollouts = t.collect(stage, 1)
    m = t.update(stage, rollouts, 1)
    units = micro_gradients(t, stage, rollouts)
    b = [n for n, _ in units]
    assert len(units) == 4 and set(b) == {4}, "16 rows in 4 equal micro-batches"
    g = sum(gk for _, gk in units)
    assert torch.allclose(g, flat(t.grads[0]), rtol=1e-6, atol=1e-9)  # the step's own gradient
    # McCandlish et al. App. A.1 with B_small = 4 rows, B_big = 16 rows (per-row mean gradients)
    B_small, B_big = 4, 16
    small = sum(float((gk / B_small).pow(2).sum()) for _, gk in units) / len(units)
    big = float((g / B_big).pow(2).sum())
    G2 = (B_big * big - B_small * small) / (B_big - B_small)
    S = (small - big) / (1 / B_small - 1 / B_big)
    assert m[records.GRAD_NOISE_SCALE] == pytest.approx(S / G2, rel=1e-6)
    assert m[records.GRAD_SNR] == pytest.approx(B_big * G2 / S, rel=1e-6)    # ‖E g‖² / tr Cov g
    assert m[records.GRAD_MEAN_SQ] == pytest.approx(B_big ** 2 * G2, rel=1e-6)  # g = Σ rows = N·mean
    assert m[records.GRAD_NOISE_TRCOV] == pytest.approx(B_big * S, rel=1e-6)


def test_unequal_micro_batches_give_the_unbiased_moment_solution(model_dir, tmp_path):
    """5 + 5 + 5 + 1 rows: tr Σ and ‖μ‖² solve E Σ_k ‖g_k‖²/n_k = N‖μ‖² + K tr Σ and
    E‖g‖² = N²‖μ‖² + N tr Σ (a linear solve here, closed form in the code)."""
    t = trainer(model_dir, tmp_path, "grpo", "--micro-batch", "5")
    stage = t.stages[0]
    rollouts = t.collect(stage, 1)
    m = t.update(stage, rollouts, 1)
    units = micro_gradients(t, stage, rollouts)
    n = torch.tensor([k for k, _ in units], dtype=torch.float64)
    assert n.tolist() == [5, 5, 5, 1]
    g = sum(gk for _, gk in units)
    A = sum(float(gk.pow(2).sum()) / k for k, gk in units)
    N, K = float(n.sum()), len(units)
    mu2, tr1 = torch.linalg.solve(torch.tensor([[N, K], [N * N, N]], dtype=torch.float64),
                                  torch.tensor([A, float(g.pow(2).sum())], dtype=torch.float64)).tolist()
    assert m[records.GRAD_NOISE_SCALE] == pytest.approx(tr1 / mu2, rel=1e-6)
    assert m[records.GRAD_SNR] == pytest.approx(N * mu2 / tr1, rel=1e-6)


@pytest.mark.parametrize("preset", ["grpo", "hpt"])
def test_diagnostics_and_the_micro_batch_split_leave_the_update_unchanged(model_dir, tmp_path, preset):
    t = trainer(model_dir, tmp_path, preset, "--micro-batch", "3")
    stage = t.stages[0]
    rollouts = t.collect(stage, 1)
    on = t.update(stage, rollouts, 1)
    t.cfg = dataclasses.replace(t.cfg, diagnostics_every=0)
    off = t.update(stage, rollouts, 1)
    t.cfg = dataclasses.replace(t.cfg, micro_batch=64)
    whole = t.update(stage, rollouts, 1)
    assert records.GRAD_SNR in on and records.GRAD_SNR not in off
    assert not any(k.startswith("grad/") and k != records.GRAD_NORM for k in off)
    a, b, c = (flat(g) for g in t.grads)
    assert torch.equal(a, b), "diagnostics changed the gradient"
    assert torch.allclose(a, c, rtol=1e-5, atol=1e-8), "micro-batches changed the gradient"
    assert on[records.GRAD_NORM] == off[records.GRAD_NORM]


def demo_rollouts(t, rewards: list[float]) -> Rollouts:
    """Per prompt one rollout row holding the demonstration's tokens (reward ``r``) and the
    demonstration itself, in one group."""
    rows = []
    for g, r in enumerate(rewards):
        e = data.from_problem(task.make_problem(0, g), f"p{g}")
        p, d = tuple(t.prompt_fn(e)), tuple(t.demo_ids(e))
        rows += [Row(p, d, r, r > 0, g, False, 0, e), Row(p, d, 1.0, True, g, True, 1, e)]
    return Rollouts(rows, rows, {})


@pytest.mark.parametrize("reward, cos", [(1.0, 1.0), (-1.0, -1.0)])
def test_cos_sft_rl_is_one_when_rl_repeats_sft_and_minus_one_when_it_negates_it(model_dir, tmp_path, reward, cos):
    """The RL part trains rollouts that are copies of the demonstrations with Â = r (π_θ
    denominator, token mean, like SFT): r = +1 gives g_rl = g_sft, r = −1 gives g_rl = −g_sft."""
    t = trainer(model_dir, tmp_path, "hpt", "--micro-batch", "2")
    sft = estimators.PRESETS["sft"]
    est = Hybrid(rl=Estimator(Pt.NoClip(), Pt.Current(), Pt.Reward(), Pt.Plain(), Pt.TokenMean()),
                 sft=sft, gate=Pt.Always(1.0, 1.0), trainer=estimators.TrainerSteps(gated_demos=True))
    stage = dataclasses.replace(t.stages[0], est=est)
    m = t.update(stage, demo_rollouts(t, [reward] * 3), 1)
    assert m[records.GRAD_COS_SFT_RL] == pytest.approx(cos, abs=1e-6)
    assert m[records.GRAD_NORM_SFT] == pytest.approx(m[records.GRAD_NORM_RL], rel=1e-5)
    assert m[records.GRAD_NORM_SFT] > 0
    total = m[records.GRAD_NORM]  # ‖g_sft + g_rl‖: 2‖g_sft‖ or 0
    assert total == pytest.approx((1 + cos) * m[records.GRAD_NORM_SFT], rel=1e-5, abs=1e-6)


def test_hpt_run_logs_the_sft_rl_split(model_dir, tmp_path):
    """A real HPT step whose gate sends some prompts to SFT: the two parts add up to the update."""
    t = trainer(model_dir, tmp_path, "hpt", "--micro-batch", "3", "--gate-gamma", "1")
    stage = t.stages[0]
    m = t.update(stage, t.collect(stage, 1), 1)
    s, r, c, g = (m[k] for k in (records.GRAD_NORM_SFT, records.GRAD_NORM_RL, records.GRAD_COS_SFT_RL,
                                 records.GRAD_NORM))
    assert g ** 2 == pytest.approx(s * s + r * r + 2 * c * s * r, rel=1e-5)
    assert -1 <= c <= 1


def enumerated_groups(G: int, p_num: int, p_den: int):
    """Every reward vector of a group of G, repeated ∝ p^c (1−p)^(G−c) with p = p_num/p_den:
    the pooled rows are exactly the binomial distribution of the rewards."""
    rewards, groups = [], []
    g = 0
    for vec in itertools.product([0, 1], repeat=G):
        c = sum(vec)
        for _ in range(p_num ** c * (p_den - p_num) ** (G - c)):
            rewards += list(vec)
            groups += [g] * G
            g += 1
    return torch.tensor(rewards, dtype=torch.float64), torch.tensor(groups)


@pytest.mark.parametrize("preset, G, p", [("grpo", 3, (1, 3)), ("grpo", 4, (1, 2)),
                                          ("dr_grpo", 3, (2, 3)), ("rloo", 4, (1, 4))])
def test_realised_prompt_weight_equals_exact_w_on_an_enumerated_case(preset, G, p):
    est = estimators.get(preset)
    r, grp = enumerated_groups(G, *p)
    B = len(r)
    b = Batch(logp=torch.zeros(B, 2, dtype=torch.float64), mask=torch.ones(B, 2, dtype=torch.float64),
              reward=r, group=grp)
    rows = [Row((1,), (2,), float(x), bool(x), int(g), False, 0, data.Example(f"p{g}", (), "", "", "L3"))
            for x, g in zip(r.tolist(), grp.tolist())]
    diag = diagnostics.for_step(1, 1, rows, G, est)
    half = B // 2  # two mini-batches of whole groups
    for idx in (torch.arange(0, half - half % G), torch.arange(half - half % G, B)):
        sub = b.select(idx)
        diag.weights(sub, est.plan(sub), idx)
    m = diag.metrics(SingleProcess())
    exact = float(group_weight(est.advantage, torch.tensor([p[0] / p[1]]), G)[0])
    assert m[records.grad_pass_rate_key("L3")] == pytest.approx(p[0] / p[1], abs=1e-12)
    assert m[records.grad_w_exact_key("L3")] == pytest.approx(exact, abs=1e-12)
    assert m[records.grad_w_empirical_key("L3")] == pytest.approx(exact, abs=1e-10)
    if preset == "grpo" and G == 4:
        assert exact != pytest.approx((G - 1) / G)  # std normalisation: a difficulty weight


def test_training_run_logs_every_kth_step(model_dir, tmp_path):
    run.main(["grpo", "--model", model_dir, "--runs-dir", str(tmp_path), "--run-id", "k2",
              "--steps", "2", "--prompts-per-step", "4", "--n", "4", "--max-new-tokens", "8",
              "--micro-batch", "4", "--diagnostics-every", "2", "--eval-every", "0", "--eval-k", "1",
              "--save-every", "0", "--progress", "false", "--threads", "1"], reward_fn=alternating)
    rows = {r["step"]: r for r in records.read_metrics(tmp_path / "k2")[0]}
    assert records.GRAD_SNR not in rows[1] and records.GRAD_SNR in rows[2]
    assert any(k.startswith(records.GRAD_W_EXACT) for k in rows[2])
    assert math.isfinite(rows[2][records.GRAD_NOISE_TRCOV])


# ----------------------------------------------------------------------------- dashboard

def write_diagnostics_run(root, name="hpt-diag", steps=6, N=16):
    """A run whose metrics rows carry the diagnostics (values chosen, not trained)."""
    w = records.RunWriter(root / name)
    w.write_config({"preset": "hpt", "config": {"preset": "hpt"}})
    rows = {}
    for s in range(1, steps + 1):
        mean_sq, trcov = 0.5 + 0.1 * s, 2.0 + 0.3 * (s % 3)
        row = {records.ROLLOUT_ACCURACY: 0.2 + 0.05 * s, records.TRAIN_ENTROPY: 1.0 - 0.05 * s,
               records.GRAD_MEAN_SQ: mean_sq, records.GRAD_NOISE_TRCOV: trcov,
               records.GRAD_SNR: mean_sq / trcov, records.GRAD_NOISE_SCALE: N * trcov / mean_sq,
               records.GRAD_COS_SFT_RL: -0.2 + 0.05 * s, records.GRAD_NORM_SFT: 1.0,
               records.GRAD_NORM_RL: 0.5}
        for level, p in (("1", 0.8), ("5", 0.1 + 0.01 * s)):
            row[records.grad_pass_rate_key(level)] = p
            row[records.grad_w_exact_key(level)] = 1.0 / math.sqrt(p * (1 - p))
            row[records.grad_w_empirical_key(level)] = 1.1 / math.sqrt(p * (1 - p))
        w.log_metrics(s, row)
        rows[s] = row
    return rows


def test_training_page_shows_the_diagnostics_beside_accuracy_and_entropy(tmp_path, monkeypatch):
    from test_dashboard import charts, open_app, select_runs

    rows = write_diagnostics_run(tmp_path)
    at = select_runs(open_app(tmp_path, monkeypatch, "Training"), ["hpt-diag"])
    shown = charts(at)
    _, snr = shown["Gradient SNR"]
    want = {s: r[records.GRAD_MEAN_SQ] / r[records.GRAD_NOISE_TRCOV] for s, r in rows.items()}
    assert snr.set_index("step")["value"].to_dict() == pytest.approx(want)
    _, b = shown["Gradient noise scale"]
    assert b.set_index("step")["value"].to_dict() == pytest.approx(
        {s: r[records.GRAD_NOISE_SCALE] for s, r in rows.items()})
    _, cos = shown["SFT vs RL: cosine of their update parts"]
    assert cos.set_index("step")["value"].to_dict() == pytest.approx(
        {s: r[records.GRAD_COS_SFT_RL] for s, r in rows.items()})
    _, norms = shown["SFT vs RL: norms of their update parts"]
    assert set(norms["metric"]) == {records.GRAD_NORM_SFT, records.GRAD_NORM_RL}
    # beside accuracy and entropy: one row of two columns
    left, right = at.columns[0], at.columns[1]
    titles = lambda col: [json.loads(c.proto.spec)["title"] for c in col.get("vega_lite_chart")]  # noqa: E731
    assert [t if isinstance(t, str) else t["text"] for t in titles(left)] == ["Rollout accuracy", "Entropy"]
    assert [t if isinstance(t, str) else t["text"] for t in titles(right)] == ["Gradient SNR", "Gradient noise scale"]
    # w(p): one realised and one exact point per level, the means over the steps
    (spec, w), = [v for t, v in shown.items() if t.startswith("Prompt weight w(p)")]
    w = w.set_index(["level", "kind"])
    p5 = sum(r[records.grad_pass_rate_key("5")] for r in rows.values()) / len(rows)
    assert w.loc[("5", gradients.EXACT), "p"] == pytest.approx(p5)
    assert w.loc[("5", gradients.EMPIRICAL), "w"] == pytest.approx(
        sum(r[records.grad_w_empirical_key("5")] for r in rows.values()) / len(rows))
    assert w.loc[("1", gradients.EXACT), "w"] == pytest.approx(1 / math.sqrt(0.16))
    text = json.dumps(spec, ensure_ascii=False)
    assert "pass rate p" in text and "weight w of ∇p" in text
    # smoothing averages numerator and denominator before the ratio (McCandlish App. A.1)
    at.slider(key="train_smooth").set_value(3).run()
    _, snr3 = charts(at)["Gradient SNR"]
    m2 = [rows[s][records.GRAD_MEAN_SQ] for s in (4, 5, 6)]
    tr = [rows[s][records.GRAD_NOISE_TRCOV] for s in (4, 5, 6)]
    assert snr3.set_index("step")["value"][6] == pytest.approx(sum(m2) / sum(tr))
    at.slider(key="train_w_steps").set_value((5, 6)).run()
    (_, w56), = [v for t, v in charts(at).items() if t.startswith("Prompt weight w(p)")]
    assert set(w56["steps"]) == {2}


def test_training_page_says_when_no_diagnostics_were_logged(tmp_path, monkeypatch):
    from test_dashboard import open_app, select_runs

    w = records.RunWriter(tmp_path / "old")
    w.write_config({"preset": "grpo"})
    w.log_metrics(1, {records.ROLLOUT_ACCURACY: 0.3})
    at = select_runs(open_app(tmp_path, monkeypatch, "Training"), ["old"])
    captions = " ".join(c.value for c in at.caption)
    assert "Gradient SNR: not logged" in captions and "Prompt weights w(p): not logged" in captions


def stratum_trcov(units) -> float:
    """N_s·tr Σ_s of one source from its micro-batch gradients (the moment equations, solved)."""
    n = [k for k, _ in units]
    g = sum(gk for _, gk in units)
    A = sum(float(gk.pow(2).sum()) / k for k, gk in units)
    N, K = float(sum(n)), len(units)
    _, tr1 = torch.linalg.solve(torch.tensor([[N, K], [N * N, N]], dtype=torch.float64),
                                torch.tensor([A, float(g.pow(2).sum())], dtype=torch.float64)).tolist()
    return N * tr1


def test_hybrid_noise_is_stratified_by_source(model_dir, tmp_path):
    """HPT with demonstrations and rollouts: each source's covariance from its own micro-batches
    (the demonstrations take two even though they fit in one), ‖E g‖² = ‖g‖² − tr Cov."""
    t = trainer(model_dir, tmp_path, "hpt", "--micro-batch", "6", "--gate-gamma", "1")
    stage = t.stages[0]
    rollouts = t.collect(stage, 1)
    m = t.update(stage, rollouts, 1)
    rows = rollouts.rows
    packed = pack([r.prompt_ids for r in rows], [r.response_ids for r in rows], t.tok.pad_token_id)
    sm = StepMetrics()
    sb = t.old_batch(stage, rollouts, packed, t.one_pass(stage, 1, rollouts), sm)
    mini = t.mini_batch(stage, sb, torch.arange(len(rows)), sm)
    passes = t.backend.micro_batches(mini.trained, t.cfg.micro_batch, mini.batch.is_demo)
    units = {False: [], True: []}
    for micro, demo in zip(passes, passes.demo):
        assert bool(mini.batch.is_demo[micro].all()) == demo and bool(mini.batch.is_demo[micro].any()) == demo
        s = score(t.model, _select_packed(mini.packed, micro), temperature=t.cfg.temperature)
        g = torch.autograd.grad(t.micro_loss(mini, micro, s, sm), t.params, allow_unused=True)
        units[demo].append((len(micro), flat([torch.zeros_like(p) if x is None else x for x, p in zip(g, t.params)])))
    assert len(units[True]) >= 2 and len(units[False]) >= 2, "both sources present, each split"
    g = sum(gk for u in units.values() for _, gk in u)
    trcov = stratum_trcov(units[False]) + stratum_trcov(units[True])
    mean_sq = float(g.pow(2).sum()) - trcov
    N = sum(k for u in units.values() for k, _ in u)
    assert m[records.GRAD_NOISE_TRCOV] == pytest.approx(trcov, rel=1e-6)
    assert m[records.GRAD_SNR] == pytest.approx(mean_sq / trcov, rel=1e-6)
    assert m[records.GRAD_NOISE_SCALE] == pytest.approx(N * trcov / mean_sq, rel=1e-6)
    sft = sum(gk for _, gk in units[True])
    assert m[records.GRAD_NORM_SFT] == pytest.approx(float(sft.norm()), rel=1e-6)


# ------------------------------------------------------------------- several processes (slow)

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("preset, extra", [("grpo", ()), ("hpt", ()), ("hpt", ("--fsdp", "true"))],
                         ids=["grpo", "hpt", "hpt-fsdp"])
def test_two_processes_log_the_diagnostics_of_one(tmp_path, preset, extra):
    """2 processes (torchrun, gloo) = 1 process with the same global batch, on the embedded base
    (the tiny model solves nothing: zero rewards, zero RL gradient); hpt's gate trains every
    prompt's demonstration and rollouts (``--gate always``). The SFT/RL split and the
    prompt weights are global in any layout; with 4 rows per micro-batch grpo's ranks run the
    single process's micro-batches (32 rows, 8 prompts), so there even the noise estimates agree (a hybrid's
    gate leaves ranks with other micro-batches; FSDP's units are passes over both ranks)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    model = str(base.ensure_base(log=lambda s: None))
    evals = tmp_path / "eval.jsonl"
    task.export(evals, "test", count=8)
    args = [preset, "--model", model, "--runs-dir", str(tmp_path), "--eval-data", str(evals),
            "--steps", "2", "--prompts-per-step", "8" if preset == "grpo" else "4",
            "--num-generations", "4", "--max-new-tokens", "48", "--micro-batch", "4", "--lr", "1e-3", "--eval-k", "1",
            "--eval-every", "0", "--save-every", "0", "--progress", "false", "--threads", "1",
            "--seed-per-prompt", "true"] + (["--gate", "always"] if preset == "hpt" else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
              "--master_port", str(_free_port())]
    for cmd, run_id in (([sys.executable], "one"), (launch, "two")):
        done = subprocess.run([*cmd, "-m", "training.run", *args, "--run-id", run_id,
                               *(extra if run_id == "two" else ())],
                              cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = ({r["step"]: r for r in records.read_metrics(tmp_path / k)[0]} for k in ("one", "two"))
    split = [records.GRAD_NORM_SFT, records.GRAD_NORM_RL, records.GRAD_COS_SFT_RL]
    noise = [records.GRAD_SNR, records.GRAD_NOISE_SCALE, records.GRAD_NOISE_TRCOV, records.GRAD_MEAN_SQ]
    per_level = (records.GRAD_W_EMPIRICAL, records.GRAD_W_EXACT, records.GRAD_PASS_RATE)
    assert any(one[step][records.GRAD_NORM] > 0 for step in (1, 2))
    for step in (1, 2):
        a, b = one[step], two[step]
        weights = sorted(k for k in a if k.startswith(per_level))
        assert weights and weights == sorted(k for k in b if k.startswith(per_level))
        same = weights + (split if preset == "hpt" else noise)
        assert [k for k in same if k in a] == [k for k in same if k in b], step
        for k in same:
            if k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), (step, k)
        if a[records.GRAD_NORM] > 0:
            assert all(math.isfinite(b[k]) for k in noise if k in b), (step, {k: b.get(k) for k in noise})
