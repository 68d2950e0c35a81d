"""The verifiable reward: the last ``\\boxed{...}`` of a completion checked against the ground truth.

    reward_fn(completions: list[str], ground_truth: list[str], **kw) -> list[float]   # 1.0 / 0.0

(TRL-compatible: TRL passes dataset columns as keyword arguments, so a ``ground_truth`` column
arrives as that argument; other keywords are ignored.)

Each check runs in two stages:
1. extract the last boxed answer (no box → 0) and compare quickly: equal normalised strings → 1;
   both exact numbers (integers, decimals, scientific notation, ``a/b``, ``\frac{a}{b}``) →
   their exact rational values decide (`exact_number`; math-verify compares numbers as floats,
   so ``12345678901234567890`` would equal ``…891`` and ``1/3`` would equal ``0.333``);
2. otherwise math-verify (``parse`` + ``verify``) in a worker *process* with its own timeouts off
   (they use signals, which fail outside the main thread) and a hard per-check limit on the
   worker's **CPU time**, enforced by the parent (so a loaded machine, which slows the check's
   wall time but not its CPU time, does not turn a true equality into a timeout; a wall-clock
   backstop of `WALL_FACTOR` × the limit bounds the cost when the worker gets little CPU): a check that
   times out or raises scores 0 and is counted in ``reward_fn.timeouts`` (the training loop logs
   it as ``rollout/verifier_timeouts``; the worker is killed and restarted lazily).
"""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Optional

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_DECIMAL = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_EXACT = [re.compile(rf"^(?P<num>{_DECIMAL})$"),
          re.compile(rf"^(?P<num>{_DECIMAL})/(?P<den>{_DECIMAL})$"),
          re.compile(rf"^(?P<sign>[+-]?)\\[dt]?frac\{{(?P<num>{_DECIMAL})\}}\{{(?P<den>{_DECIMAL})\}}$"),
          re.compile(rf"^(?:(?P<num>{_DECIMAL})\\(?:times|cdot))?10\^(?:\{{(?P<exp>[+-]?\d+)\}}|(?P<exp1>\d))$")]
MAX_EXPONENT = 10_000  # larger powers of ten are left to math-verify (exact ones cost memory)
WALL_FACTOR = 2.0  # wall-clock backstop of a check, in units of its CPU-time limit: a machine
                   # loaded to half speed does not change a verdict; an adversarial answer still
                   # costs at most twice the limit


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


def exact_number(s: str) -> Optional[Fraction]:
    """The exact rational value of a normalised answer that is a plain number — an integer, a
    decimal, scientific notation (``1e-300``, ``3\\times10^{8}``, ``10^{-300}``), ``a/b`` or
    ``\\frac{a}{b}`` (also ``\\dfrac``, ``\\tfrac``) of such numbers — else None (so is a zero
    denominator)."""
    for pattern in _EXACT:
        m = pattern.match(s)
        if m:
            d = m.groupdict()
            exp = d.get("exp") or d.get("exp1")
            exps = [int(exp or 0)] + [int(e) for e in re.findall(r"[eE]([+-]?\d+)", s)]
            if max(map(abs, exps)) > MAX_EXPONENT:
                return None  # 10^{huge}: left to math-verify, never built digit by digit
            den = _rational(d["den"]) if d.get("den") else Fraction(1)
            if den == 0:
                return None
            value = _rational(d["num"] or "1") / den * (Fraction(10) ** int(exp) if exp is not None else 1)
            return -value if d.get("sign") == "-" else value
    return None


def _rational(decimal: str) -> Fraction:
    """Exact value of a decimal string (through `Decimal`: no limit on the number of digits)."""
    return Fraction(Decimal(decimal))


def quick_check(pred: str, truth: str) -> Optional[bool]:
    """True/False when decidable without math-verify (equal strings, or two plain decimal
    numbers, compared exactly)."""
    p, t = _normalise(pred), _normalise(truth)
    if p == t:
        return True
    if _NUMBER.match(p) and _NUMBER.match(t):
        return Decimal(p) == Decimal(t)
    return None


def exact_check(pred: str, truth: str) -> Optional[bool]:
    """True/False when both answers are exact numbers (`exact_number`): rational equality."""
    a, b = exact_number(_normalise(pred)), exact_number(_normalise(truth))
    return a == b if a is not None and b is not None else None


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

    def ensure(self) -> bool:
        """Start the worker unless it runs (start-up is never part of a check's time)."""
        return (self.proc is not None and self.proc.poll() is None) or self._start()

    def check(self, pred: str, truth: str, limit: float) -> Optional[bool]:
        """Verdict, or None when the check timed out or raised (start-up is not timed)."""
        if not self.ensure():
            return None
        try:
            self.proc.stdin.write(json.dumps([pred, truth]) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.close()
            return None
        reply = self._read(limit, cpu=True)
        if reply is None:
            self.close()
            return None
        return reply[1] if reply[0] == "ok" else None

    def _read(self, limit: float, cpu: bool = False) -> Optional[list]:
        """The worker's next reply, or None once it used ``limit`` seconds: of CPU time with
        ``cpu`` (wall time after `WALL_FACTOR` × ``limit`` at most), else of wall time."""
        t0, c0 = time.monotonic(), _cpu_seconds(self.proc.pid) if cpu else None
        wall = limit * WALL_FACTOR if c0 is not None else limit
        while True:
            left = wall - (time.monotonic() - t0)
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, min(left, 0.05)))
            if ready:
                line = self.proc.stdout.readline()
                return json.loads(line) if line else None
            if left <= 0 or (c0 is not None and (_cpu_seconds(self.proc.pid) or c0) - c0 >= limit):
                return None

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


def _cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of process ``pid`` (Linux /proc), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class BoxedReward:
    """``reward_fn(completions, ground_truth, **kw) -> list[float]``: 1.0 when the last boxed
    answer equals the ground truth, else 0.0. ``time_limit``: hard CPU seconds per math-verify
    check (the worker's one-time start-up is not counted); math-verify verdicts are cached per
    (answer, truth) pair (timeouts are not). ``timeouts`` counts checks that timed out or raised (scored 0)."""

    time_limit: float = 2.0
    timeouts: int = 0
    cache_size: int = 100_000
    _worker: _Worker = field(default_factory=_Worker, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)
    _started: bool = field(default=False, repr=False)

    def __call__(self, completions: list[str], ground_truth: list[str], **kw) -> list[float]:
        if len(completions) != len(ground_truth):
            raise ValueError(f"reward_fn: {len(completions)} completions but {len(ground_truth)} "
                             "ground truths")
        if completions and not self._started:  # the worker is up from the first call on
            self._started = self._worker.ensure()
        return [self.score(c, str(t)) for c, t in zip(completions, ground_truth)]

    def score(self, completion: str, truth: str) -> float:
        pred = last_boxed(completion)
        if pred is None:
            return 0.0
        quick = quick_check(pred, truth)
        quick = exact_check(pred, truth) if quick is None else quick
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
