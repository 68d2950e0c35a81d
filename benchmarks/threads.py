"""Torch CPU threads on a short run of the embedded default (training/resources.py).

    python benchmarks/threads.py [--steps 10] [--preset hpt]

Runs the same seeded run three times, one after the other, in fresh processes: ``--threads 1``,
the default (no ``--threads``: chosen from the free cores and the load), and torch's own default
(one thread per core, what the default was before). Prints one row per setting: the thread count
the run used, the machine's load when it started, the training time (sum of
``time/step_seconds``), the process's wall time, the ratio of training time to ``--threads 1``,
and whether its metrics equal the ``--threads 1`` run's. The embedded base model is built (and
cached) first, outside the timings.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import records  # noqa: E402
from training import base, resources  # noqa: E402


def run(preset: str, steps: int, runs: Path, name: str, threads: list[str]) -> dict:
    cmd = [sys.executable, "-m", "training.run", preset, "--steps", str(steps), "--save-every", "0",
           "--eval-every", "0", "--progress", "false", "--runs-dir", str(runs), "--run-id", name, *threads]
    load = resources.current_load()
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.time() - t0
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    used = re.search(r"torch threads: (\d+)", out.stderr)
    rows, _ = records.read_metrics(runs / name)
    train = sum(r.get(records.STEP_SECONDS, 0.0) for r in rows if r["step"] > 0)
    metrics = [{k: v for k, v in r.items() if k not in ("time", records.STEP_SECONDS)} for r in rows]
    return {"threads": int(used.group(1)) if used else None, "load": load, "train_s": train,
            "wall_s": wall, "metrics": metrics}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--preset", default="hpt")
    args = p.parse_args(argv)
    base.ensure_base(log=lambda s: print(s, file=sys.stderr))
    cores = resources.available_cores()
    settings = {"--threads 1": ["--threads", "1"], "default (automatic)": [],
                f"torch default (--threads {cores})": ["--threads", str(cores)]}
    with tempfile.TemporaryDirectory() as tmp:
        results = {label: run(args.preset, args.steps, Path(tmp), f"r{i}", extra)
                   for i, (label, extra) in enumerate(settings.items())}
    ref = results["--threads 1"]
    print(f"{args.preset}, {args.steps} steps, {cores} usable cores")
    print(f"| setting | threads | load at start | training s | wall s | training / --threads 1 | same metrics |")
    print("|---|---|---|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['threads']} | {r['load']:.1f} | {r['train_s']:.1f} | {r['wall_s']:.1f} | "
              f"{r['train_s'] / ref['train_s']:.2f} | {r['metrics'] == ref['metrics']} |")


if __name__ == "__main__":
    main()
