"""``python -m dashboards [--runs DIR] [--port N]``: serve the dashboard on this machine only.

Streamlit reads ``.streamlit/config.toml`` from the working directory, so ``streamlit run
dashboards/app.py`` started anywhere but the repository root listens on every interface with
usage statistics on. This entry point passes the server options on streamlit's command line
(which overrides every config file and environment variable), whatever the working directory:
bound to 127.0.0.1, no usage statistics, headless. The equivalent by hand::

    streamlit run dashboards/app.py --server.address 127.0.0.1 --browser.gatherUsageStats false -- --runs DIR
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

APP = Path(__file__).resolve().with_name("app.py")
LOOPBACK = "127.0.0.1"
SERVER_OPTIONS = {
    "server.address": LOOPBACK,
    "browser.serverAddress": LOOPBACK,
    "browser.gatherUsageStats": "false",
    "server.headless": "true",
}
DEFAULT_PORT = 8501


def command(runs: Optional[str], port: int) -> list[str]:
    """The streamlit command line that serves ``app.py`` over ``runs`` on 127.0.0.1:``port``."""
    options = [f"--{k}={v}" for k, v in {**SERVER_OPTIONS, "server.port": port}.items()]
    app_args = ["--", "--runs", str(Path(runs).resolve())] if runs else []
    return [sys.executable, "-m", "streamlit", "run", str(APP), *options, *app_args]


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", help="runs directory (default: $UPGE_RUNS_DIR, else ./runs)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1")
    args = p.parse_args(argv)
    if args.runs and not Path(args.runs).is_dir():
        p.error(f"--runs {args.runs}: not a directory")
    cmd = command(args.runs, args.port)
    print(f"dashboard: http://{LOOPBACK}:{args.port} (this machine only)", file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
