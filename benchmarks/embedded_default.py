"""The embedded default run (``python -m training.run hpt``), the previous path against this one,
phase by phase, in one run:

    python benchmarks/embedded_default.py                  # the full default (120 steps)
    python benchmarks/embedded_default.py --steps 20       # reduced: a few minutes
    python benchmarks/embedded_default.py --baseline REV   # another git revision as the old path

The old path is the repository at ``--baseline`` (default: the commit before the fast rollout
engine, where rollouts and evaluation used HF ``generate``), extracted with ``git archive``; the
new path is this checkout. Each runs ``python -m training.run hpt --steps N`` in a fresh process
with an empty ``UPGE_CACHE`` (a cold cache: the base model is built), its own runs directory and
the same ``--threads`` (default: the automatic choice, computed once here), old first. Prints the
phases each run reports (``wall time ... (base model ..., sample ..., ...)``), the process's wall
and CPU time (the CPU time moves less with other jobs on a shared machine) and the ratio old /
new, then the held-out accuracy (step 0 and last) of both runs. Timings on a shared machine move
with its load: compare within one run, and phases whose code did not change (the base build)
show how much the load moved between the two runs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASELINE = "5ff1b10"  # the embedded default before the fast engine and the faster base build
PHASES = ("base model", "sample", "score", "train", "eval")


def checkout(rev: str, dest: Path) -> Path:
    """The files of ``rev`` (this repository's git history) under ``dest``."""
    try:
        blob = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                              capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        err = getattr(e, "stderr", b"") or b""
        raise SystemExit(f"--baseline {rev}: cannot read it from git ({err.decode().strip() or e}); "
                         "run in a git clone, or pass an existing revision") from None
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def run(tree: Path, work: Path, steps: int, threads: int) -> dict:
    """Phases (s), process wall time and the printed result of one cold-cache default run."""
    cache, runs = work / "cache", work / "runs"
    cmd = [sys.executable, "-m", "training.run", "hpt", "--steps", str(steps), "--threads", str(threads),
           "--progress", "false", "--runs-dir", str(runs), "--run-id", "bench"]
    env = {**os.environ, "PYTHONPATH": str(tree), "UPGE_CACHE": str(cache)}
    t0, c0 = time.time(), _children_cpu()
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall, cpu = time.time() - t0, _children_cpu() - c0
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} (in {tree}) failed:\n{out.stderr[-3000:]}")
    line = re.search(r"wall time [\d.]+s \((.*)\)", out.stderr)
    phases = {k: float(v) for k, v in re.findall(r"([a-z ]+?) ([\d.]+)s(?:, |$)", line.group(1))} if line else {}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    first = _first_eval(runs / "bench")
    return {"phases": phases, "wall": wall, "cpu": cpu, "result": result, "first": first}


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (less moved by other jobs on a
    shared machine than wall time)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _first_eval(run_dir: Path) -> dict:
    import records

    rows, _ = records.read_metrics(run_dir)
    return next((r for r in rows if r["step"] == 0), {})


def table(old: dict, new: dict) -> str:
    lines = ["| phase | old s | new s | old / new |", "|---|---|---|---|"]
    other = lambda r: sum(v for k, v in r["phases"].items() if k not in PHASES)  # noqa: E731
    for name in PHASES:
        a, b = old["phases"].get(name, 0.0), new["phases"].get(name, 0.0)
        lines.append(f"| {name} | {a:.1f} | {b:.1f} | {a / b if b else float('nan'):.2f} |")
    lines.append(f"| other (setup, checkpoints) | {other(old):.1f} | {other(new):.1f} | |")
    lines.append(f"| **total (process wall)** | {old['wall']:.1f} | {new['wall']:.1f} | "
                 f"**{old['wall'] / new['wall']:.2f}** |")
    lines.append(f"| total CPU time (process) | {old['cpu']:.1f} | {new['cpu']:.1f} | "
                 f"{old['cpu'] / new['cpu']:.2f} |")
    return "\n".join(lines)


def accuracy(label: str, r: dict) -> str:
    acc = lambda m: m.get("eval/accuracy", float("nan"))  # noqa: E731
    ci = r["result"].get("eval/ci95")
    return (f"{label}: held-out avg@k {100 * acc(r['first']):.1f} % (step 0) -> "
            f"{100 * acc(r['result']):.1f} % (step {r['result'].get('step')})"
            + (f", 95 % CI half-width {100 * ci:.1f} points" if ci is not None else ""))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=120, help="training steps of each run (the default run: 120)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of both runs (0 = the automatic choice)")
    p.add_argument("--baseline", default=BASELINE, help="git revision of the old path")
    args = p.parse_args(argv)
    from training import resources

    threads = args.threads or resources.auto_threads()[0]
    with tempfile.TemporaryDirectory(prefix="upge-bench-default-") as tmp:
        tmp = Path(tmp)
        old_tree = checkout(args.baseline, tmp / "old-tree")
        print(f"hpt, {args.steps} steps, {threads} torch thread(s), cold cache; old = {args.baseline}, "
              f"new = this checkout", flush=True)
        old = run(old_tree, tmp / "old", args.steps, threads)
        new = run(ROOT, tmp / "new", args.steps, threads)
    print(table(old, new))
    print(accuracy("old", old))
    print(accuracy("new", new))


if __name__ == "__main__":
    main()
