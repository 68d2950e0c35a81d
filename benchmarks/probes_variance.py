"""Wall time of the variance probe's user-facing commands (a benchmark, not a timed test).

    python benchmarks/probes_variance.py            # default table and --sweep-G

Targets on a 2-core laptop: the default ``--estimators all`` table under 60 s, ``--sweep-G``
under 5 minutes. Each command runs in its own process, so interpreter and torch start-up are
included, as a user sees them. Timings on shared CPUs are noisy; rerun before quoting.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "default table (--estimators all)": ["--estimators", "all"],
    "sweep over G (--sweep-G)": ["--estimators", "all", "--sweep-G"],
}


def main() -> None:
    for label, args in COMMANDS.items():
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "probes.variance", *args, "--out", out],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t
        inner = [ln for ln in proc.stdout.splitlines() if " rows in " in ln]
        status = "ok" if proc.returncode == 0 else f"FAILED ({proc.stderr.strip()[-200:]})"
        print(f"{label:36s} {wall:7.1f} s wall   [{inner[-1].strip() if inner else ''}]  {status}")


if __name__ == "__main__":
    main()
