"""What a run shows while it runs: wall time per phase and the progress bar."""
from __future__ import annotations

import sys
import time
from collections import defaultdict
from contextlib import contextmanager

import records


class Timers(defaultdict):
    """Wall time per phase (seconds)."""

    def __init__(self):
        super().__init__(float)

    @contextmanager
    def __call__(self, phase: str):
        t0 = time.time()
        yield
        self[phase] += time.time() - t0


def progress_bar(cfg: RunConfig, start: int):
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start, desc=cfg.preset, disable=not cfg.progress,
                dynamic_ncols=True, file=sys.stderr)


def postfix(m: dict) -> dict:
    keys = {records.ROLLOUT_ACCURACY: "acc", records.GATE_SFT_FRACTION: "sft",
            records.EVAL_ACCURACY: "eval"}
    return {short: f"{m[k]:.2f}" for k, short in keys.items() if k in m}
