"""Wall time of the variance probe on a run's checkpoints (a benchmark, not a timed test).

    python benchmarks/probes_runs.py [--run runs/<id>] [--threads 2]

Measures ``python -m probes.variance --run DIR --checkpoints all --estimators ...`` at the
default budget on the embedded default's checkpoints: 4 checkpoints × the paper's 14 presets
but PPO, which needs critic values the default run does not record (``--estimators all``: every
preset the run can supply). Without ``--run`` it first trains the embedded default
(``python -m training.run hpt``, 120 steps) with a checkpoint every 30 steps, keeping 4. Target on a
2-core machine: under 5 minutes. Its CPU time (user + system) is printed too: on a machine shared
with other jobs it is the number that does not depend on the load. The baseline, measured in the same run, is the run's own training
step (``time/step_seconds`` from its metrics): the table gives the probe's cost per checkpoint in
training steps. The command runs in its own process (interpreter and torch start-up included, as a
user sees it). Timings on shared CPUs are noisy: the load average is printed with the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import records  # noqa: E402

# the paper-table presets but ppo, whose critic values the default run does not record
PAPER_14 = "sft,reinforce,rloo,reinforce_pp,grpo,dr_grpo,dapo,gspo,cispo,luffy,srft,hpt,hpt_paper"


def train_default(root: Path, threads: int) -> Path:
    cmd = [sys.executable, "-m", "training.run", "hpt", "--runs-dir", str(root), "--run-id", "hpt-default",
           "--save-every", "30", "--keep-checkpoints", "4", "--progress", "false", "--threads", str(threads)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    return root / "hpt-default"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=None, help="a run of the embedded default with 4 checkpoints")
    ap.add_argument("--estimators", default=PAPER_14,
                    help="comma list or 'all' (default: the 14 presets of the paper's table; 'all' = every preset)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (on a shared, loaded machine 1 is much faster than 2)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="probes-runs-bench-"))
    try:
        run = Path(args.run) if args.run else train_default(tmp, args.threads)
        ckpts = sorted((run / records.CHECKPOINTS).glob("step-*"))
        metrics, _ = records.read_metrics(run)
        steps = [m[records.STEP_SECONDS] for m in metrics if records.STEP_SECONDS in m]
        step_s = sum(steps) / len(steps) if steps else float("nan")
        out = tmp / "copy"
        shutil.copytree(run, out, ignore=shutil.ignore_patterns(records.PROBES_DIR))
        cmd = [sys.executable, "-m", "probes.variance", "--run", str(out), "--checkpoints", "all",
               "--estimators", args.estimators, "--threads", str(args.threads)]
        load0 = os.getloadavg()[0]
        t = time.perf_counter()
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
        load1 = os.getloadavg()[0]
        rows, _ = records.read_probes(out, records.PROBE_VARIANCE)
        estimators = sorted({r["estimator"] for r in rows} - {"reference"})
        n_ckpt = len({r["setting"].split(",")[0] for r in rows})
        status = "ok" if proc.returncode == 0 else f"FAILED ({proc.stderr.strip()[-300:]})"
        print(f"run {run} ({len(ckpts)} checkpoints), load average {load0:.1f} -> {load1:.1f} on "
              f"{os.cpu_count()} CPUs, {args.threads} threads")
        print(f"{'what':44s} {'wall s':>9s} {'CPU s':>9s} {'per ckpt s':>11s} {'train steps':>12s}")
        print(f"{'one training step of the run (baseline)':44s} {step_s:9.2f} {'':>9s} {'':>11s} {1.0:12.1f}")
        per = wall / max(n_ckpt, 1)
        print(f"{f'probe: {n_ckpt} checkpoints x {len(estimators)} estimators':44s} {wall:9.1f} {cpu:9.1f} "
              f"{per:11.1f} {per / step_s:12.1f}   {status}")
        print(json.dumps({"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "checkpoints": n_ckpt,
                          "estimators": estimators, "target_s": 300, "under_target": wall < 300}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
