"""``python -m training.compare --presets sft,grpo,sft_then_grpo,luffy,hpt --seeds 0,1,2``

Runs every preset × seed under identical conditions (same base model, steps, prompts per step,
rollouts per prompt, generation length — hence the same sample budget; `sft` samples nothing,
DAPO may sample more to refill) and prints a table shaped like the paper's Table 2: held-out
accuracy per level, the average, and pass@k at the largest k, as mean ± 95% CI over seeds.
Extra arguments after ``--`` go to every ``training.run``.

``python -m training.compare --read runs/hpt-s0 trl_out/ verl_logs/my_project`` trains nothing:
it reads the runs given — ours, TRL output dirs, verl file-logger dirs (`records.foreign`) — and
prints their last logged values side by side, under our metric names.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import records

from .config import parse_args

# two-sided 95% Student-t quantiles by degrees of freedom (1..10), then the normal value
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
       10: 2.228}


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t confidence interval (NaN with one value)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, T95.get(len(xs) - 1, 1.96) * sd / math.sqrt(len(xs))


def final_scores(run_dir: Path) -> dict:
    """{column: value} of the run's last evaluation: per-level and overall avg@k, pass@kmax."""
    rows, _ = records.read_eval(run_dir)
    if not rows:
        return {}
    last = max(r["step"] for r in rows)
    rows = [r for r in rows if r["step"] == last]
    out = {f"L{r['level']}" if r["level"] != "all" else "Avg": r["value"]
           for r in rows if r["metric"] == "avg@k"}
    kmax = max(r["k"] for r in rows if r["metric"] == "pass@k")
    out[f"pass@{kmax}"] = next(r["value"] for r in rows if r["metric"] == "pass@k"
                               and r["level"] == "all" and r["k"] == kmax)
    out["step"] = last
    return out


def base_scores(run_dir: Path) -> dict:
    """The step-0 evaluation (the base model before training)."""
    rows, _ = records.read_eval(run_dir)
    rows = [r for r in rows if r["step"] == 0]
    out = {f"L{r['level']}" if r["level"] != "all" else "Avg": r["value"]
           for r in rows if r["metric"] == "avg@k"}
    if rows:
        kmax = max(r["k"] for r in rows if r["metric"] == "pass@k")
        out[f"pass@{kmax}"] = next(r["value"] for r in rows if r["metric"] == "pass@k"
                                   and r["level"] == "all" and r["k"] == kmax)
    return out


def table(results: dict, base: dict | None = None) -> str:
    """Markdown table: one row per preset, cells mean ± CI over seeds."""
    cols = sorted({c for runs in results.values() for s in runs for c in s if c.startswith("L")})
    cols += ["Avg"] + sorted({c for runs in results.values() for s in runs if s
                              for c in s if c.startswith("pass@")})
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    if base:
        lines.append("| base model | " + " | ".join(f"{100 * base.get(c, float('nan')):.1f}"
                                                     for c in cols) + " |")
    for name, runs in results.items():
        cells = []
        for c in cols:
            xs = [100 * s[c] for s in runs if c in s]
            m, h = mean_ci(xs) if xs else (float("nan"), float("nan"))
            cells.append(f"{m:.1f} ± {h:.1f}" if not math.isnan(h) else f"{m:.1f}")
        lines.append(f"| {name} (n={len(runs)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


READ_COLUMNS = (records.ROLLOUT_REWARD, records.ROLLOUT_ACCURACY, records.TRAIN_ENTROPY,
                records.ROLLOUT_LENGTH, records.GRAD_NORM, records.GATE_SFT_FRACTION, records.EVAL_ACCURACY)


def last_values(run_dir: Path) -> dict:
    """{metric: last logged value} of a run of ours, TRL's or verl's (our names), with "steps"."""
    rows, _ = records.read_metrics(run_dir)
    out: dict = {"steps": max((r["step"] for r in rows), default=0)}
    for r in rows:
        out.update({k: v for k, v in r.items() if isinstance(v, (int, float)) and k != "step"})
    return out


def read_table(run_dirs: list[Path]) -> str:
    """Markdown table of existing runs (any trainer): their last value of each `READ_COLUMNS`
    metric that one of them logged."""
    from records import foreign

    found = {Path(d): last_values(Path(d)) for d in run_dirs}
    cols = [c for c in READ_COLUMNS if any(c in v for v in found.values())]
    lines = ["| run | trainer | steps | " + " | ".join(cols) + " |", "|---" * (len(cols) + 3) + "|"]
    for d, v in found.items():
        cells = [f"{v[c]:.4g}" if c in v else "" for c in cols]
        lines.append(f"| {d.name} | {foreign.kind(d) or 'upge'} | {v['steps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_one(preset: str, seed: int, root: Path, extra: list[str]) -> Path:
    run_dir = root / f"{preset}-s{seed}"
    status = records.read_status(run_dir)
    if status.get("state") == "finished":
        return run_dir
    cmd = [sys.executable, "-m", "training.run", preset, "--seed", str(seed), "--runs-dir",
           str(root), "--run-id", run_dir.name, "--progress", "false", "--threads", "1", *extra]
    if run_dir.exists() and (run_dir / records.CHECKPOINTS).is_dir():
        cmd = [sys.executable, "-m", "training.run", preset, "--resume", str(run_dir),
               "--progress", "false"]
    elif run_dir.exists():  # stopped before its first checkpoint: nothing to resume, start again
        shutil.rmtree(run_dir)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    print(f"  {preset} seed {seed}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return run_dir


def seed_list(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (argparse type)."""
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None


def positive_int(text: str) -> int:
    """An integer ≥ 1 (argparse type)."""
    if not text.lstrip("-").isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer ≥ 1")
    return int(text)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="sft,grpo,sft_then_grpo,luffy,hpt")
    p.add_argument("--read", nargs="+", metavar="RUN_DIR", default=None,
                   help="train nothing: print the last metrics of these runs (ours, TRL, verl)")
    p.add_argument("--seeds", type=seed_list, default="0,1,2")
    p.add_argument("--runs-dir", default="runs/compare")
    p.add_argument("--jobs", type=positive_int, default=max(1, (os.cpu_count() or 1)),
                   help="runs in parallel (each uses one torch thread)")
    args, extra = p.parse_known_args(argv)
    if args.read:
        missing = [d for d in args.read if not records.is_run_dir(Path(d))]
        if missing:
            p.error(f"not a run directory (ours, a TRL output dir or a verl file-logger dir): {', '.join(missing)}")
        out = read_table([Path(d) for d in args.read])
        print(out)
        return out
    extra = [a for a in extra if a != "--"]
    presets, seeds = args.presets.split(","), args.seeds
    for preset in presets:  # every run's arguments checked before any work (one line, exit 2)
        parse_args([preset, *extra, "--seed", str(seeds[0]), "--runs-dir", args.runs_dir])
    root = Path(args.runs_dir)
    from .base import ensure_base

    ensure_base(log=lambda s: print(s, file=sys.stderr, flush=True))  # build once, not per job
    jobs = [(pr, s) for pr in presets for s in seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        dirs = list(pool.map(lambda j: run_one(j[0], j[1], root, extra), jobs))
    results = {pr: [final_scores(d) for (q, _), d in zip(jobs, dirs) if q == pr] for pr in presets}
    out = table(results, base_scores(dirs[0]))
    print(out)
    return out


if __name__ == "__main__":
    main()
