"""Synthetic run records for the dashboard and paper-figure tests (and the load benchmark).

Every file is written through :class:`records.RunWriter` with the metric names and row schemas
of :mod:`records`, from seeded ``random.Random`` streams, so the numbers are deterministic.
The story they tell is the paper's: HPT improves the hard level through SFT on gated prompts,
GRPO sharpens (its hard prompts collapse, so base pass@k wins at large k), LUFFY has a constant
offline ratio of 1/8. Later this fixture may be replaced by a tiny real run.
"""
from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import records

LEVELS = ("level1", "level3", "level5")
BENCHMARK = "arith"
KS = (1, 2, 4, 8, 16, 32, 64)
AVG_K = 8
BASE_SKILL = (0.6, 0.3, 0.05)
TARGET_SKILL = {  # per level, at the last step
    "hpt": (0.95, 0.8, 0.5),
    "grpo": (0.95, 0.7, 0.0),
    "luffy": (0.9, 0.75, 0.35),
    "sft": (0.85, 0.6, 0.3),
    "sft_then_grpo": (0.92, 0.75, 0.4),
}
ESTIMATOR_PARTS = {
    "hpt": dict(mask="none", denominator="pi_old", advantage="r-mean", likelihood="plain",
                reduction="constant(8192)"),
    "grpo": dict(mask="clip(0.2)", denominator="pi_old", advantage="(r-mean)/std",
                 likelihood="plain", reduction="seq-mean-token-mean"),
    "luffy": dict(mask="none", denominator="1", advantage="(r-mean) on+off",
                  likelihood="shaped(0.1)", reduction="constant(8192)"),
    "sft": dict(mask="none", denominator="pi_theta", advantage="1", likelihood="plain",
                reduction="token-mean"),
    "sft_then_grpo": dict(mask="clip(0.2)", denominator="pi_old", advantage="(r-mean)/std",
                          likelihood="plain", reduction="seq-mean-token-mean"),
}


@dataclass(frozen=True)
class RunSpec:
    """What one synthetic run looks like."""

    run_id: str
    preset: str
    seed: int = 0
    gate_gamma: int = 0
    model: str = "tiny-qwen2"
    lora_r: int = 0
    steps: int = 20
    prompts_per_level: int = 3
    n_samples: int = 8
    eval_every: int = 5
    state: str = "finished"
    samples: bool = True
    shift: float = 0.0  # added to the target skill (the seed-to-seed spread of a comparison)


def rng_for(*parts) -> random.Random:
    """A random stream determined by ``parts`` (stable across processes)."""
    return random.Random(zlib.crc32(repr(parts).encode()))


def skill(spec: RunSpec, level: int, prompt: int, step: int) -> float:
    """Probability that a rollout of this prompt is correct at this step."""
    target = TARGET_SKILL.get(spec.preset, TARGET_SKILL["hpt"])[level] + spec.shift
    if spec.preset == "hpt" and spec.gate_gamma:
        target -= 0.05 * spec.gate_gamma
    base = BASE_SKILL[level] - 0.05 * prompt
    progress = step / max(1, spec.steps)
    return min(1.0, max(0.0, base + (target - 0.05 * prompt - base) * progress))


def prompt_ids(spec: RunSpec) -> list[tuple[int, int, str]]:
    """(level index, prompt index within level, prompt id) of every training prompt."""
    return [(li, j, f"{level}-p{j}") for li, level in enumerate(LEVELS)
            for j in range(spec.prompts_per_level)]


def n_rollouts(spec: RunSpec) -> int:
    """Rollouts per prompt (LUFFY: 7 rollouts + 1 demonstration; SFT: none)."""
    return {"luffy": spec.n_samples - 1, "sft": 0}.get(spec.preset, spec.n_samples)


def gated(spec: RunSpec) -> bool:
    return spec.preset == "hpt"


def step_samples(spec: RunSpec, step: int) -> list[dict]:
    """Sample rows of one step (rollouts, plus demonstrations where the method uses them)."""
    rng = rng_for(spec.run_id, spec.seed, "samples", step)
    rows = []
    for li, j, pid in prompt_ids(spec):
        p = skill(spec, li, j, step)
        correct = [rng.random() < p for _ in range(n_rollouts(spec))]
        to_sft = gated(spec) and sum(correct) <= spec.gate_gamma
        gate = "sft" if to_sft else "rl"
        for i, ok in enumerate(correct):
            rows.append(dict(step=step, prompt_id=pid, sample_idx=i, source="rollout",
                             reward=float(ok), correct=ok, n_tokens=rng.randint(20, 80),
                             gate=gate, level=LEVELS[li]))
        if to_sft or spec.preset in ("luffy", "sft"):
            rows.append(dict(step=step, prompt_id=pid, sample_idx=len(correct), source="demo",
                             reward=1.0, correct=True, n_tokens=60, gate=gate,
                             level=LEVELS[li]))
    return rows


def offline_ratio(rows: list[dict]) -> float:
    """Demo rows / (demo rows + on-policy rows kept for RL), as in records' docstring."""
    demo = sum(r["source"] == "demo" for r in rows)
    kept = sum(r["source"] == "rollout" and r["gate"] == "rl" for r in rows)
    return demo / (demo + kept) if demo + kept else 0.0


def passk_exact(ps: list[float], k: int) -> float:
    """Mean over problems of 1 − (1 − p)^k."""
    return sum(1.0 - (1.0 - p) ** k for p in ps) / len(ps)


def eval_rows(spec: RunSpec, step: int) -> list[dict]:
    """Tidy eval rows (avg@k and pass@k, per level and 'all') of one evaluation."""
    by_level = {lv: [skill(spec, li, j, step) for li2, j, _ in prompt_ids(spec) if li2 == li]
                for li, lv in enumerate(LEVELS)}
    by_level["all"] = [p for ps in list(by_level.values()) for p in ps]
    rows = []
    for level, ps in by_level.items():
        se = 0.5 / math.sqrt(len(ps))
        rows.append(dict(step=step, benchmark=BENCHMARK, level=level, metric="avg@k", k=AVG_K,
                         value=sum(ps) / len(ps), stderr=0.1 * se, n=len(ps)))
        rows += [dict(step=step, benchmark=BENCHMARK, level=level, metric="pass@k", k=k,
                      value=passk_exact(ps, k), stderr=0.05 * se, n=len(ps)) for k in KS]
    return rows


def eval_metrics(rows: list[dict]) -> dict:
    """The metrics-row view of an evaluation: eval/accuracy[/level] and eval/pass@k."""
    out = {}
    for r in rows:
        if r["metric"] == "avg@k":
            key = (records.EVAL_ACCURACY if r["level"] == "all"
                   else records.eval_accuracy_key(r["level"]))
            out[key] = r["value"]
        elif r["level"] == "all":
            out[records.eval_passk_key(r["k"])] = r["value"]
    return out


def step_metrics(spec: RunSpec, step: int, samples: list[dict]) -> dict:
    """Training metrics of one step, consistent with its samples."""
    rng = rng_for(spec.run_id, spec.seed, "metrics", step)
    roll = [r for r in samples if r["source"] == "rollout"]
    frac = step / max(1, spec.steps)
    prompts = {r["prompt_id"] for r in samples}
    sft_prompts = {r["prompt_id"] for r in samples if r["gate"] == "sft"}
    entropy_floor = 0.3 if spec.preset in ("grpo", "sft_then_grpo") else 0.6
    return {
        records.TRAIN_LOSS: rng.uniform(-0.1, 0.1),
        records.TRAIN_LR: 5e-6,
        records.TRAIN_ENTROPY: entropy_floor + (1.2 - entropy_floor) * math.exp(-3 * frac),
        records.ROLLOUT_REWARD: sum(r["reward"] for r in roll) / len(roll) if roll else None,
        records.ROLLOUT_ACCURACY: sum(r["correct"] for r in roll) / len(roll) if roll else None,
        records.ROLLOUT_LENGTH: 40 + 30 * frac + rng.uniform(-2, 2),
        records.GATE_SFT_FRACTION: len(sft_prompts) / len(prompts) if prompts else 0.0,
        records.GATE_OFFLINE_RATIO: offline_ratio(samples),
        records.GRAD_NORM: 1.0 + rng.uniform(0, 0.5),
        records.STEP_SECONDS: 0.5 + rng.uniform(0, 0.1),
    }


def config_of(spec: RunSpec) -> dict:
    """config.json of a synthetic run (the keys the training CLI writes)."""
    return {"preset": spec.preset, "model": spec.model, "lora_r": spec.lora_r,
            "seed": spec.seed, "gate_gamma": spec.gate_gamma, "max_steps": spec.steps,
            "lr": 5e-6, "estimator": ESTIMATOR_PARTS.get(spec.preset, ESTIMATOR_PARTS["hpt"]),
            "rollouts_per_prompt": spec.n_samples}


def eval_steps(spec: RunSpec) -> set[int]:
    return set(range(0, spec.steps + 1, spec.eval_every)) | {0, spec.steps}


def write_run(root: Path, spec: RunSpec, first_step: int = 0) -> Path:
    """Write (or continue, from ``first_step``) the records of one run."""
    w = records.RunWriter(Path(root) / spec.run_id)
    if first_step == 0:
        w.write_config(config_of(spec))
    for step in range(first_step, spec.steps + 1):
        samples = step_samples(spec, step) if step < spec.steps else []
        metrics = step_metrics(spec, step, samples) if samples else {}
        if step in eval_steps(spec):
            ev = eval_rows(spec, step)
            w.log_eval(ev)
            metrics.update(eval_metrics(ev))
        if spec.samples and samples:
            w.log_samples(samples)
        w.log_metrics(step, metrics)
    w.set_status(spec.state, spec.steps, "")
    return w.run_dir


PROBE_ESTIMATORS = ("reinforce", "rloo", "dr_grpo", "grpo", "hpt")
PROBE_GS = (2, 4, 8, 16, 32, 64)
STALE_ESTIMATORS = ("ppo", "grpo", "cispo", "gspo")
STALE_KS = (1, 4, 16)


def variance_rows(estimator: str, g: int, checkpoint: str) -> list[dict]:
    """Exact-testbed-like probe rows of one estimator at group size G (stderr NaN: exact)."""
    scale = {"dr_grpo": (g - 1) / g, "grpo": 1.8, "hpt": (g - 1) / g + 0.3}.get(estimator, 1.0)
    cos = {"grpo": 0.93 + 0.001 * g, "hpt": 0.6}.get(estimator, 1.0)
    trcov = {"reinforce": 4.0, "rloo": 2.0 + 1.0 / g}.get(estimator, 2.5) / g
    snr = (scale ** 2) / trcov / 10
    setting = f"G={g},checkpoint={checkpoint}"
    return [dict(probe="variance", estimator=estimator, setting=setting, metric=m, value=v,
                 stderr=math.nan)
            for m, v in (("scale", scale), ("cos", cos), ("trCov", trcov), ("SNR", snr),
                         ("rel_bias", abs(1 - scale)))]


def staleness_rows(estimator: str, k: int) -> list[dict]:
    """Bias of stale (θ ≠ θ_old) estimators after K minibatch steps (Monte Carlo stderr)."""
    slope = {"ppo": 0.02, "grpo": 0.025, "cispo": 0.01, "gspo": 0.015}[estimator]
    setting = f"G=8,K={k},checkpoint=mid"
    return [dict(probe="variance", estimator=estimator, setting=setting, metric=m, value=v,
                 stderr=se)
            for m, v, se in (("rel_bias", slope * k, 0.001), ("cos", 1 - slope * k / 2, 0.001),
                             ("KL", 0.001 * k * k, math.nan))]


def write_probe_run(root: Path, run_id: str = "probes-variance") -> Path:
    """A probe-only run directory (no config, no metrics), as `python -m probes.variance` makes."""
    w = records.RunWriter(Path(root) / run_id)
    rows = [r for e in PROBE_ESTIMATORS for g in PROBE_GS for c in ("base", "mid")
            for r in variance_rows(e, g, c)]
    rows += [r for e in STALE_ESTIMATORS for k in STALE_KS for r in staleness_rows(e, k)]
    w.log_probe("variance", rows)
    return w.run_dir


STANDARD_RUNS = (
    RunSpec("hpt-s0", "hpt"),
    RunSpec("hpt-g1", "hpt", gate_gamma=1),
    RunSpec("hpt-g2", "hpt", gate_gamma=2),
    RunSpec("grpo-s0", "grpo"),
    RunSpec("luffy-s0", "luffy", lora_r=8),
    RunSpec("sft-s0", "sft", samples=False),
    RunSpec("sft_then_grpo-s0", "sft_then_grpo"),
)


def write_fixture_runs(root: Path, specs=STANDARD_RUNS, probes: bool = True) -> dict[str, Path]:
    """The standard fixture: one run per method the figures need, plus a probe run."""
    out = {s.run_id: write_run(root, s) for s in specs}
    if probes:
        out["probes-variance"] = write_probe_run(root)
    return out


COMPARED = ("hpt", "grpo", "sft")
COMPARED_SEEDS = (0, 1, 2)
TUNED_LR = {"hpt": 3e-4, "grpo": 1e-4, "sft": 1e-3}


def comparison_runs(root: Path, presets=COMPARED, seeds=COMPARED_SEEDS, lr=TUNED_LR,
                    steps: int = 8) -> dict[str, list[tuple[int, Path]]]:
    """Run directories laid out as ``python -m training.compare --tune lr`` leaves its reported
    runs (``<preset>-lr<v>-s<seed>``), each seed's final skill shifted by a seeded amount (so the
    seeds differ); returns {preset: [(seed, run dir)]} as ``records.comparison.build`` takes it."""
    out: dict[str, list[tuple[int, Path]]] = {}
    for preset in presets:
        for seed in seeds:
            shift = rng_for(preset, seed, "shift").uniform(-0.05, 0.05)
            spec = RunSpec(f"{preset}-lr{lr[preset]:g}-s{seed}", preset, seed=seed, steps=steps,
                           eval_every=steps // 2, shift=shift, samples=False)
            out.setdefault(preset, []).append((seed, write_run(root, spec)))
    return out


def write_comparison(root: Path, presets=COMPARED, seeds=COMPARED_SEEDS, reference: str = "hpt"
                     ) -> Path:
    """A whole comparison directory: the runs of :func:`comparison_runs` and the comparison.json
    ``records.comparison`` builds from them (a tuning record as ``--tune lr`` writes it)."""
    from records import comparison

    root = Path(root)
    grid = sorted(set(TUNED_LR.values()))
    tuning = {"tuned": "lr", "grid": grid, "seeds": [100], "split": "validation",
              "validation_problems": 60, "trials_per_method": len(grid),
              "scores": {p: {f"{v:g}": (0.3 if v == TUNED_LR[p] else 0.2) for v in grid}
                         for p in presets},
              "chosen": {p: TUNED_LR[p] for p in presets}}
    command = {"presets": list(presets), "seeds": list(seeds), "reference": reference,
               "tune": "lr", "grid": grid, "tune_seeds": [100], "run_args": ["--steps", "8"]}
    record = comparison.build(comparison_runs(root, presets, seeds), root, command, tuning)
    return comparison.write(root, record)


def corrupt_metrics(run_dir: Path) -> None:
    """Append a half-written line to metrics.jsonl (a writer killed mid-record)."""
    with open(Path(run_dir) / records.METRICS, "a", encoding="utf-8") as f:
        f.write('{"step": 999, "rollout/rew')


def scaled(spec: RunSpec, **changes) -> RunSpec:
    """A copy of a spec with some fields changed (e.g. steps for the benchmark)."""
    return replace(spec, **changes)


BAD_PROBE = "no-stderr"
BAD_RUNS = {  # run id -> what a reader must name when it skips it
    "dangling-link": "a symlink to",
    "config-is-a-dir": "config.json: cannot be read (a directory, not a file)",
    "binary-metrics": "metrics.jsonl: line 1 is truncated or corrupt",
    "malformed-eval": "eval/scores.jsonl: line",
}


def write_bad_runs(root: Path) -> dict[str, str]:
    """Runs a user can end up with after a crash, a copy gone wrong or a hand edit, beside good
    ones: a dangling symlink (samples.jsonl and a stray json file), a directory named
    config.json, binary metrics and status files, malformed eval/sample rows and a probe row
    without ``stderr``. Returns :data:`BAD_RUNS`."""
    root = Path(root)
    run = write_run(root, RunSpec("dangling-link", "hpt", steps=4, eval_every=2))
    (run / records.SAMPLES).unlink()
    (run / records.SAMPLES).symlink_to(run / "moved-away.jsonl")
    (run / "notes.json").symlink_to(root / "no-such-dir" / "notes.json")
    run = write_run(root, RunSpec("config-is-a-dir", "grpo", steps=4, eval_every=2))
    (run / records.CONFIG).unlink()
    (run / records.CONFIG).mkdir()
    run = write_run(root, RunSpec("binary-metrics", "grpo", steps=4, eval_every=2))
    (run / records.METRICS).write_bytes(bytes(range(256)) * 16 + b'\n{"step": Infinity}\n')
    (run / records.STATUS).write_bytes(b"\xff\xfe\x00\x81 not text")
    run = write_run(root, RunSpec("malformed-eval", "hpt", steps=4, eval_every=2))
    w = records.RunWriter(run)
    w.log_eval([{"step": "last", "benchmark": BENCHMARK, "level": "all", "metric": "pass@k",
                 "k": "four", "value": "high"}, {"metric": "avg@k"}])
    w.log_samples([{"step": 1, "prompt_id": "level1-p0", "source": "rollout",
                    "correct": "false", "level": "level1"}])
    w.log_probe(BAD_PROBE, [dict(estimator="grpo", setting=f"G={g}", metric="cos", value=0.9)
                            for g in (4, 8)]                        # no stderr at all
                + [dict(estimator="grpo", setting="G=16", metric="cos", value="n/a")])
    return BAD_RUNS


RUN_PROBE_STEPS = (0, 40)


def run_probe_rows(step: int, stale: int = 0) -> list[dict]:
    """Rows as ``python -m probes.variance --run`` writes them for one checkpoint (per-update
    Monte Carlo: every value has a stderr); with ``stale`` K the rows of ``--stale K`` (setting
    ending in ``stale=K``, cos lowered by K/100)."""
    shift = step / 400 + stale / 100
    points = {"reinforce": (1.0, 0.40), "rloo": (1.0, 0.25), "dr_grpo": (7 / 8, 0.20),
              "grpo": (0.9 - shift, 0.10), "sft": (0.3 + shift, 0.0)}
    out = []
    for est, (cos, tr) in points.items():
        setting = (f"step={step},G=8,N=64,demos=0,budget=8,updates=8,grads=per-group,trcov=groups,ref=rloo(128)"
                   + (f",stale={stale}" if stale else ""))
        for metric, value, se in (("cos", cos, 0.02), ("trCov", tr, 0.01), ("rel_bias", 1 - cos, 0.02),
                                  ("scale", cos, 0.03)):
            out.append(dict(probe="variance", estimator=est, setting=setting, metric=metric, value=value,
                            stderr=se))
    return out


def write_run_probe(run_dir: Path) -> None:
    """Probe records of a training run's checkpoints (steps `RUN_PROBE_STEPS`)."""
    records.RunWriter(run_dir).log_probe("variance", [r for s in RUN_PROBE_STEPS for r in run_probe_rows(s)])
