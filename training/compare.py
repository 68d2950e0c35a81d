"""``python -m training.compare --presets sft,grpo,sft_then_grpo,luffy,hpt --seeds 0,1,2,3,4 --tune lr``

Runs every preset × seed under identical conditions (same base model, steps, prompts per step,
rollouts per prompt, generation length — hence the same sample budget; `sft` samples nothing,
DAPO may sample more to refill) and prints a table shaped like the paper's Table 2: held-out
accuracy per level, the average, pass@k at the largest k and the crossing k* against the base
model, as mean ± 95% CI over seeds; then the paired differences (``--reference`` minus each other
preset, seed by seed) with their CIs.

``--tune lr`` first runs every preset once per value of ``--lr-grid`` (the same trials for every
method, seeds ``--tune-seeds``, disjoint from the reported seeds) and scores each trial on the
*validation* split (`training.task.validation_problems`, disjoint from the test split and from
every training problem); each preset then runs at its best learning rate, chosen by validation
score only, and is reported on the test split. The choice is written to ``tuning.json`` in the
runs dir. Extra arguments after ``--`` go to every ``training.run``.

At its end the whole comparison (arguments, task, tuning choice, every run's scores and pass@k
curve, the base model's, the paired differences) is written to ``comparison.json`` in the runs
dir (`records.comparison`): the dashboard's Compare page and ``paper_figures`` Table 2 read it.

``python -m training.compare --read runs/hpt-s0 trl_out/ verl_logs/my_project`` trains nothing:
it reads the runs given — ours, TRL output dirs, verl file-logger dirs (`records.foreign`) — and
prints their last logged values side by side, under our metric names.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import records
from records import comparison
from records.comparison import (T95, base_scores, crossing_k, final_scores, mean_ci,  # noqa: F401
                                paired, paired_table, passk_curve, table)

from . import task
from .config import parse_args

TUNING = records.TUNING
VALIDATION = "validation.jsonl"
TUNED_FLAGS = {"lr": "--lr"}  # what --tune can choose, and the training.run flag that sets it


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


def run_one(preset: str, seed: int, root: Path, extra: list[str], run_id: str | None = None) -> Path:
    run_dir = root / (run_id or f"{preset}-s{seed}")
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
    _run(cmd)
    print(f"  {run_dir.name}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return run_dir


def curves_of(run_dir: Path, k: int, per_level: int) -> None:
    """``--passk``: the run's base and last checkpoint sampled k times per problem
    (`training.evaluation.curves`), in a process of its own; skipped when already there."""
    _run([sys.executable, "-m", "training.evaluation.curves", str(run_dir), "--k", str(k),
          "--per-level", str(per_level), "--threads", "1"])


def _run(cmd: list[str]) -> None:
    """Run ``cmd``; a failure raises with the end of its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")


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


def float_list(text: str) -> list[float]:
    """'1e-4,3e-4' -> [0.0001, 0.0003] (argparse type; each value > 0)."""
    try:
        xs = [float(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None
    if not all(x > 0 for x in xs):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be > 0")
    return xs


def tune(presets: list, grid: list, seeds: list, root: Path, extra: list, pool, flag: str = "lr",
         variant: str = "arith") -> dict:
    """Run every preset at every grid value (same trials for all), score each on the validation
    split only, and return the tuning record (``tuning.json``; its "chosen": {preset: value})."""
    val = root / VALIDATION
    root.mkdir(parents=True, exist_ok=True)
    task.export(val, split="validation", variant=variant)
    trials = [(pr, v, s) for pr in presets for v in grid for s in seeds]
    dirs = list(pool.map(lambda t: run_one(
        t[0], t[2], root, [*extra, TUNED_FLAGS[flag], repr(t[1]), "--eval-data", str(val),
                           "--eval-every", "0"], run_id=f"tune-{t[0]}-{flag}{t[1]:g}-s{t[2]}"), trials))
    scores: dict = {}
    for (pr, v, _), d in zip(trials, dirs):
        scores.setdefault(pr, {}).setdefault(v, []).append(final_scores(d)["Avg"])
    means = {pr: {v: sum(xs) / len(xs) for v, xs in by.items()} for pr, by in scores.items()}
    chosen = {pr: max(grid, key=lambda v: (means[pr][v], -grid.index(v))) for pr in presets}
    record = {
        "tuned": flag, "grid": grid, "seeds": seeds, "split": "validation",
        "validation_problems": len(task.validation_problems()), "trials_per_method": len(grid) * len(seeds),
        "scores": {pr: {f"{v:g}": means[pr][v] for v in grid} for pr in presets},
        "chosen": {pr: chosen[pr] for pr in presets}}
    records.write_json(root / TUNING, record)
    for pr in presets:
        print(f"  {pr}: {flag} {chosen[pr]:g} (validation avg "
              f"{100 * means[pr][chosen[pr]]:.1f} %)", file=sys.stderr, flush=True)
    return record


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
    p.add_argument("--tune", choices=["none", *TUNED_FLAGS], default="none",
                   help="choose this hyper-parameter per preset on the validation split first")
    p.add_argument("--lr-grid", type=float_list, default="1e-4,3e-4,1e-3",
                   help="learning rates tried by --tune lr")
    p.add_argument("--tune-seeds", type=seed_list, default="100",
                   help="seeds of the tuning trials (keep them apart from --seeds)")
    p.add_argument("--passk", type=int, default=0, metavar="K",
                   help="also sample K completions per problem of --passk-per-level test problems per level "
                        "from each run's base and last checkpoint: pass@k curves up to K and the crossing k* "
                        "(training/evaluation/curves.py); 0 = off")
    p.add_argument("--passk-per-level", type=positive_int, default=20)
    p.add_argument("--reference", default="hpt",
                   help="paired differences: this preset minus each other one, seed by seed")
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
    if args.tune != "none":
        for fixed in (TUNED_FLAGS[args.tune], "--eval-data"):
            if fixed in extra:
                p.error(f"{fixed} is chosen by --tune {args.tune}; leave it out of the run arguments")
        if set(args.tune_seeds) & set(seeds):
            p.error(f"--tune-seeds {args.tune_seeds} overlap --seeds {seeds}: tune on other seeds")
    for preset in presets:  # every run's arguments checked before any work (one line, exit 2)
        cfg = parse_args([preset, *extra, "--seed", str(seeds[0]), "--runs-dir", args.runs_dir])
    root = Path(args.runs_dir)
    from .base import config_for, ensure_base

    if not cfg.model:  # build once, not per job
        ensure_base(config_for(cfg.task), log=lambda s: print(s, file=sys.stderr, flush=True))
    with ThreadPoolExecutor(args.jobs) as pool:
        tuning = (tune(presets, args.lr_grid, args.tune_seeds, root, extra, pool, args.tune, cfg.task)
                  if args.tune != "none" else {})
        chosen = tuning.get("chosen", {})
        flag = TUNED_FLAGS.get(args.tune)

        def report_run(job):
            pr, s = job
            if pr not in chosen:
                return run_one(pr, s, root, extra)
            return run_one(pr, s, root, [*extra, flag, repr(chosen[pr])],
                           run_id=f"{pr}-{args.tune}{chosen[pr]:g}-s{s}")

        jobs = [(pr, s) for pr in presets for s in seeds]
        dirs = list(pool.map(report_run, jobs))
        if args.passk:  # one process per run, as for training (one torch thread each)
            list(pool.map(lambda d: curves_of(d, args.passk, args.passk_per_level), dirs))
    runs: dict = {}
    for (pr, s), d in zip(jobs, dirs):
        runs.setdefault(pr, []).append((s, d))
    command = {"presets": presets, "seeds": seeds, "reference": args.reference, "tune": args.tune,
               "grid": args.lr_grid if tuning else [], "tune_seeds": args.tune_seeds if tuning else [],
               "run_args": extra}
    record = comparison.build(runs, root, command, tuning)
    path = comparison.write(root, record)
    results = comparison.results_of(record)
    out = table(results, record["base"]["scores"])
    if args.reference in results and len(results) > 1:
        out += "\n\n" + paired_table(results, args.reference)
    print(out)
    print(f"  written: {path}", file=sys.stderr, flush=True)
    return out


if __name__ == "__main__":
    main()
