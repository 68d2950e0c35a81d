"""Small helpers shared by the probe CLIs (standard library only, so `passk` stays torch-free)."""
from __future__ import annotations

import time
from pathlib import Path


def default_out(name: str) -> Path:
    """The default run directory of a probe: ``runs/probes-<name>-<YYYYmmdd-HHMMSS>``."""
    return Path("runs") / f"probes-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
