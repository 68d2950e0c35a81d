"""Real-browser check of the dashboard: `streamlit run` on a free loopback port, headless Debian
chromium dumps the DOM and takes a screenshot (artifacts/dashboard.png, kept by CI). The runs
directory holds bad runs beside the good ones (fixtures_records.write_bad_runs): the page must
render the good ones and name the bad.

Deselected by default; run with ``pytest -m browser`` (needs ``apt-get install chromium``).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import fixtures_records as fx

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--virtual-time-budget=15000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll Streamlit's health endpoint until it answers (or the server died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("streamlit did not become healthy")


def chromium(url: str, profile: Path, *extra: str) -> str:
    """Run headless chromium once with a fresh profile dir; return its stdout."""
    out = subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", *extra, url],
                         capture_output=True, text=True, timeout=120, check=False)
    return out.stdout


@pytest.fixture
def server(tmp_path):
    """`streamlit run dashboards/app.py` over fixture runs, stopped by its PID at the end."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    runs = tmp_path / "runs"
    fx.write_fixture_runs(runs)
    fx.write_bad_runs(runs)            # skipped with a note; the good runs still render
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "dashboards/app.py",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--", "--runs", str(runs)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    pid = proc.pid
    try:
        wait_healthy(port, proc)
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        os.killpg(pid, signal.SIGTERM)        # the server's own process group, by its PID
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
            proc.wait()


def rendered(dom: str) -> bool:
    """The page's content is there (not just Streamlit's loading skeleton), down to the notes on
    skipped records, which the app writes last."""
    return "Runs shown" in dom and "vega-embed" in dom and "unreadable record" in dom


def dump_rendered(url: str, tmp: Path, attempts: int = 12) -> str:
    """The DOM once the page has rendered. The first load after the server starts shows only
    the skeleton (and a busy machine may need several more): load again until it renders."""
    dom = ""
    for i in range(attempts):
        dom = chromium(url, tmp / f"profile-dom{i}", "--dump-dom")
        if i > 0 and rendered(dom):
            break
        time.sleep(2)
    return dom


MIN_SCREENSHOT_BYTES = 40_000  # the grey loading skeleton alone is ~8 kB


def screenshot(url: str, tmp: Path, path: Path, attempts: int = 8) -> Path:
    """A screenshot of the rendered page (retaken while it still shows the skeleton)."""
    path.parent.mkdir(exist_ok=True)
    for i in range(attempts):
        path.unlink(missing_ok=True)
        chromium(url, tmp / f"profile-shot{i}", f"--screenshot={path}", "--window-size=1400,1000")
        if path.exists() and path.stat().st_size > MIN_SCREENSHOT_BYTES:
            break
    return path


def test_dashboard_renders_in_chromium(server):
    base, tmp = server
    url = f"{base}/?page=Training"
    dom = dump_rendered(url, tmp)
    assert "Training" in dom and "Runs shown" in dom
    assert "vega-embed" in dom and ("<canvas" in dom or "<svg" in dom)
    assert "unreadable record" in dom and "config-is-a-dir/config.json" in dom
    shot = screenshot(url, tmp, ARTIFACTS / "dashboard.png")
    assert shot.stat().st_size > MIN_SCREENSHOT_BYTES
