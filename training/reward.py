"""The verifiable reward: the last ``\\boxed{...}`` of a completion checked against the ground truth.

    reward_fn(completions: list[str], ground_truth: list[str], **kw) -> list[float]   # 1.0 / 0.0

(TRL-compatible: TRL passes dataset columns as keyword arguments, so a ``ground_truth`` column
arrives as that argument; other keywords are ignored.)

Each check runs in two stages:
1. extract the last boxed answer (no box → 0) and compare quickly: equal normalised strings → 1;
   both plain numbers → numeric equality decides;
2. otherwise math-verify (``parse`` + ``verify``) in a worker *process* with its own timeouts off
   (they use signals, which fail outside the main thread) and a hard per-check time limit
   enforced by the parent: a check that times out or raises scores 0 and is counted in
   ``reward_fn.timeouts`` (the worker is killed and restarted lazily).
"""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def _normalise(s: str) -> str:
    s = s.strip().replace(" ", "").replace("\\!", "").rstrip(".")
    if s.startswith("$") and s.endswith("$") and len(s) > 1:
        s = s[1:-1]
    return s


def quick_check(pred: str, truth: str) -> Optional[bool]:
    """True/False when decidable without math-verify (equal strings, or two plain numbers)."""
    p, t = _normalise(pred), _normalise(truth)
    if p == t:
        return True
    if _NUMBER.match(p) and _NUMBER.match(t):
        return float(p) == float(t)
    return None


def _verify(pred: str, truth: str) -> bool:
    """math-verify equality of the boxed answer and the ground truth (no signal timeouts)."""
    from math_verify import parse, verify

    gold = parse(f"${truth}$", parsing_timeout=None)
    ans = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    return bool(verify(gold, ans, timeout_seconds=None))


def _serve() -> None:  # pragma: no cover - runs in the worker process
    """Worker loop: one JSON request [pred, truth] per stdin line, one JSON reply per line."""
    import logging

    import math_verify  # noqa: F401 - imported before "ready", so checks are timed alone

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" notes
    print(json.dumps(["ready", None]), flush=True)
    for line in sys.stdin:
        pred, truth = json.loads(line)
        try:
            reply = ["ok", _verify(pred, truth)]
        except Exception as e:  # noqa: BLE001 - any failure of the checker scores 0
            reply = ["error", repr(e)]
        print(json.dumps(reply), flush=True)


@dataclass
class _Worker:
    """One math-verify process (``python -m training.reward``, so no main module is re-imported);
    killed and replaced when a check exceeds its time limit."""

    startup: float = 60.0
    proc: Optional[subprocess.Popen] = None

    def check(self, pred: str, truth: str, limit: float) -> Optional[bool]:
        """Verdict, or None when the check timed out or raised (start-up is not timed)."""
        if (self.proc is None or self.proc.poll() is not None) and not self._start():
            return None
        try:
            self.proc.stdin.write(json.dumps([pred, truth]) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.close()
            return None
        reply = self._read(limit)
        if reply is None:
            self.close()
            return None
        return reply[1] if reply[0] == "ok" else None

    def _read(self, limit: float) -> Optional[list]:
        ready, _, _ = select.select([self.proc.stdout], [], [], limit)
        line = self.proc.stdout.readline() if ready else ""
        return json.loads(line) if line else None

    def _start(self) -> bool:
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-m", "training.reward"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     bufsize=1, env=env)
        if self._read(self.startup) == ["ready", None]:
            return True
        self.close()
        return False

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=5)
            for f in (self.proc.stdin, self.proc.stdout):
                f.close()
        self.proc = None


@dataclass
class BoxedReward:
    """``reward_fn(completions, ground_truth, **kw) -> list[float]``: 1.0 when the last boxed
    answer equals the ground truth, else 0.0. ``time_limit``: hard seconds per math-verify check
    (the worker's one-time start-up is not counted); math-verify verdicts are cached per
    (answer, truth) pair (timeouts are not). ``timeouts`` counts checks that timed out or raised (scored 0)."""

    time_limit: float = 2.0
    timeouts: int = 0
    cache_size: int = 100_000
    _worker: _Worker = field(default_factory=_Worker, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    def __call__(self, completions: list[str], ground_truth: list[str], **kw) -> list[float]:
        if len(completions) != len(ground_truth):
            raise ValueError(f"reward_fn: {len(completions)} completions but {len(ground_truth)} "
                             "ground truths")
        return [self.score(c, str(t)) for c, t in zip(completions, ground_truth)]

    def score(self, completion: str, truth: str) -> float:
        pred = last_boxed(completion)
        if pred is None:
            return 0.0
        quick = quick_check(pred, truth)
        if quick is not None:
            return float(quick)
        if (pred, truth) in self._cache:  # rollouts repeat the same wrong answers
            return self._cache[(pred, truth)]
        verdict = self._worker.check(pred, truth, self.time_limit)
        if verdict is None:
            self.timeouts += 1
            return 0.0
        if len(self._cache) < self.cache_size:
            self._cache[(pred, truth)] = float(verdict)
        return float(verdict)

    def close(self) -> None:
        self._worker.close()

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


if __name__ == "__main__":
    _serve()
