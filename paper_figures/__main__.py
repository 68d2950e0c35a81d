"""``python -m paper_figures --runs runs/ --out figures/ [--only NAME ...] [--run-missing]``.

Draws every figure and table it has runs for, and prints the command that produces each missing
run. ``--run-missing`` first runs those commands (embedded-default experiments, by subprocess
``python -m training.run <preset> ... --runs-dir <runs>``), then draws everything.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from paper_figures import SCRIPTS
from paper_figures.common import (MINUTES_PER_RUN, FigureResult, Requirement, RunIndex, report,
                                  unique_requirements)
from records.tables import ENV_RUNS_DIR


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m paper_figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="runs directory")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output directory")
    parser.add_argument("--only", nargs="+", choices=sorted(SCRIPTS), help="just these")
    parser.add_argument("--run-missing", action="store_true",
                        help=f"run the missing experiments first (~{MINUTES_PER_RUN} min each "
                             "on CPU with the embedded default)")
    args = parser.parse_args(argv)
    if not args.run_missing and not args.runs.is_dir():
        parser.error(f"--runs {args.runs}: no such directory (--run-missing creates its runs)")
    return args


def make_all(runs: Path, out: Path, names: Sequence[str]) -> list[FigureResult]:
    """Draw the chosen figures from the records under ``runs``, then print a note on every
    record that was skipped (which run, which file, why)."""
    index = RunIndex(runs)
    results = [draw(name, index, out) for name in names]
    for note in dict.fromkeys(index.notes):
        print(f"note: {note}")
    return results


def draw(name: str, index: RunIndex, out: Path) -> FigureResult:
    """One figure; should it fail on records the readers let through, it is reported as not
    drawn and the other figures are still made."""
    try:
        return SCRIPTS[name](index, out)
    except Exception as e:  # noqa: BLE001 - one figure's failure must not cost the others
        return FigureResult(name, pd.DataFrame(), error=f"{type(e).__name__}: {e}")


def missing_runs(results: Sequence[FigureResult]) -> list[Requirement]:
    """Every missing run, once, in the order first needed."""
    return unique_requirements(req for r in results for req in r.missing)


def run_experiments(reqs: Sequence[Requirement], runs: Path) -> list[int]:
    """Run each missing experiment with the training CLI; returns their exit codes."""
    print(f"running {len(reqs)} experiment(s), about {MINUTES_PER_RUN * len(reqs)} min "
          f"in all on CPU (embedded default)", flush=True)
    env = {**os.environ, ENV_RUNS_DIR: str(runs)}
    codes = []
    for req in reqs:
        print(f"$ {req.command}", flush=True)
        argv = [sys.executable, "-m", "training.run", *req.argv(), "--runs-dir", str(runs)]
        codes.append(subprocess.run(argv, env=env, check=False).returncode)
    return codes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or list(SCRIPTS)
    results = make_all(args.runs, args.out, names)
    todo = missing_runs(results)
    if todo and args.run_missing:
        if any(run_experiments(todo, args.runs)):
            print("some experiments failed; drawing what exists", file=sys.stderr)
        results = make_all(args.runs, args.out, names)
        todo = missing_runs(results)
    for result in results:
        print(report(result))
    if todo:
        print(f"\n{len(todo)} run(s) missing; make them with --run-missing or:")
        print("\n".join(f"  {req.command}" for req in todo))
    return 0


if __name__ == "__main__":
    sys.exit(main())
