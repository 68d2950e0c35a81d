"""Grading of benchmark completions, and pluggable rewards.

    grade("math", completion, "\\frac{1}{2}")           # 1.0 / 0.0: last \\boxed{} vs truth (training.reward)
    grade("mc", completion, "B", choices=("A","B","C","D"))   # letter (or digit) answer
    reward = load_reward("training.reward:BoxedReward")   # any ``module:function`` (a class is instantiated)
    reward(completions, ground_truth, kind=[...], choices=[...]) -> list[float]

Multiple choice (GPQA, ARC-c): the completion's answer is its **last** answer marker —
``ANSWER: X`` (GPQA's requested last line; also ``Answer: (X)``, ``answer is X``) or
``\\boxed{X}`` (the LUFFY/Qwen-Math instruction; ``\\boxed{\\text{(B)}}``, ``\\boxed{B) ...}``
accepted) — whichever comes later in the text. Correct when that label equals the ground truth.
ARC-c numbers some questions' options 1–4; there a letter answer is read by position (B ↔ 2),
and a digit answer to a lettered question likewise (2 ↔ B). No marker → 0.

Reward functions are TRL-compatible: ``reward_fn(completions: list[str], ground_truth: list[str],
**kw) -> list[float]`` (other dataset columns arrive as keyword lists and may be ignored).
"""
from __future__ import annotations

import importlib
import re
from typing import Callable, Optional, Sequence

LETTERS = "ABCDEFGHIJ"
_ANSWER = re.compile(r"answer\**\s*(?:is\s*[:：]?|[:：])\s*\**\s*[\(\[\$]?\s*(?:\\text\{)?\s*([A-J]|[1-9])\b",
                     re.I)
_LABEL = re.compile(r"^\s*[\(\[]?\s*(?:\\text\{|\\textbf\{|\\mathrm\{)?\s*[\(\[]?\s*([A-J]|[1-9])\s*[\)\]\}\.:]*"
                    r"(?:\s|$|\))")
_BOXED = "\\boxed{"


class RewardError(ValueError):
    """A reward spec that cannot be loaded, or a reward function that returned bad output."""


# ------------------------------------------------------------------------- multiple choice

def _boxed_spans(text: str) -> list[tuple[int, str]]:
    """(position, content) of every balanced ``\\boxed{...}``."""
    out, start = [], text.find(_BOXED)
    while start >= 0:
        i, depth = start + len(_BOXED), 1
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                out.append((start, text[i:j]))
                break
        start = text.find(_BOXED, start + 1)
    return out


def extract_choice(completion: str) -> Optional[str]:
    """The label (A–J or 1–9, upper-case) of the completion's last answer marker, or None."""
    marks: list[tuple[int, str]] = []
    for pos, content in _boxed_spans(completion):
        m = _LABEL.match(content.replace("$", ""))
        if m:
            marks.append((pos, m.group(1).upper()))
    for m in _ANSWER.finditer(completion):
        label = m.group(1)
        enclosed = completion[m.start(1) - 1] in "([" or completion[m.end(1):m.end(1) + 1] in (")", "]")
        if label.isalpha() and label.islower() and not enclosed:
            continue  # "answer is a ..." is prose, not option (a)
        marks.append((m.start(), label.upper()))
    return max(marks)[1] if marks else None


def _as_label(pred: str, choices: Sequence[str]) -> str:
    """Map a letter to a digit option by position (and back) when the question's options use
    the other kind; unchanged otherwise."""
    if not choices or pred in choices:
        return pred
    if pred.isdigit() and not choices[0].isdigit() and int(pred) <= len(LETTERS):
        return LETTERS[int(pred) - 1]
    if pred.isalpha() and choices[0].isdigit():
        return str(LETTERS.index(pred) + 1)
    return pred


def grade_choice(completion: str, answer: str, choices: Sequence[str] = ()) -> float:
    """1.0 when the completion's last answer label equals ``answer`` (see module docstring)."""
    pred = extract_choice(completion)
    if pred is None:
        return 0.0
    return float(_as_label(pred, tuple(choices)) == str(answer).strip().upper())


# ----------------------------------------------------------------------------------- math

_MATH: list = []


def math_reward():
    """The shared boxed-answer math reward (`training.reward.BoxedReward`, created on first use)."""
    if not _MATH:
        from .reward import BoxedReward

        _MATH.append(BoxedReward())
    return _MATH[0]


def grade(kind: str, completion: str, answer: str, choices: Sequence[str] = ()) -> float:
    """Score one completion: 'math' → the boxed-answer verifier, 'mc' → letter grading."""
    if kind == "math":
        return math_reward()([completion], [str(answer)])[0]
    if kind == "mc":
        return grade_choice(completion, answer, choices)
    raise ValueError(f"grade: unknown kind {kind!r}; expected 'math' or 'mc'")


class BenchmarkReward:
    """TRL-style reward over mixed benchmark rows: ``kind`` (list, default all 'math') and
    ``choices`` (list of label tuples) keyword columns pick the grader per row; math rows are
    scored in one batched call of ``math`` (default: the shared `BoxedReward`)."""

    def __init__(self, math: Optional[Callable] = None):
        self.math = math

    def __call__(self, completions: list[str], ground_truth: list[str], kind=None, choices=None,
                 **kw) -> list[float]:
        n = len(completions)
        if len(ground_truth) != n:
            raise RewardError(f"reward: {n} completions but {len(ground_truth)} ground truths")
        kind = list(kind) if kind is not None else ["math"] * n
        choices = list(choices) if choices is not None else [()] * n
        out = [0.0] * n
        math_idx = [i for i in range(n) if kind[i] == "math"]
        if math_idx:
            fn = self.math or math_reward()
            scores = fn([completions[i] for i in math_idx], [str(ground_truth[i]) for i in math_idx])
            for i, s in zip(math_idx, scores):
                out[i] = float(s)
        for i in range(n):
            if kind[i] == "mc":
                out[i] = grade_choice(completions[i], ground_truth[i], choices[i] or ())
            elif kind[i] != "math":
                raise RewardError(f"reward: row {i} has unknown kind {kind[i]!r} (expected 'math' or 'mc')")
        return out

    @property
    def timeouts(self) -> int:
        return getattr(self.math or math_reward(), "timeouts", 0)


# --------------------------------------------------------------------------- pluggable rewards

def load_object(spec: str, what: str = "reward",
                example: str = "'module:function', e.g. 'training.grading:BenchmarkReward' or "
                               "'my_rewards:accuracy'"):
    """``"package.module:attr"`` → that object (``attr`` may be dotted). Raises `RewardError`
    naming ``what`` (the flag or role) and what failed: no colon (``example`` says what is
    expected), a module that does not import, a missing attribute."""
    if ":" not in spec:
        raise RewardError(f"{what} {spec!r}: expected {example}")
    module, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise RewardError(f"{what} {spec!r}: cannot import module {module!r} ({e}); is it on "
                          "PYTHONPATH (run from the repository root or pip install it)?") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardError(f"{what} {spec!r}: module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_reward(spec: str) -> Callable:
    """``"package.module:function"`` → that callable. A class is instantiated with no
    arguments (e.g. ``training.reward:BoxedReward``). Raises `RewardError` naming what failed."""
    obj = load_object(spec)
    if isinstance(obj, type):
        obj = obj()
    if not callable(obj):
        raise RewardError(f"reward {spec!r}: {spec.partition(':')[2]!r} is not callable")
    return obj


def call_reward(fn: Callable, completions: list[str], ground_truth: list[str], **kw) -> list[float]:
    """Call a reward function and check its output: one finite float per completion."""
    out = fn(completions, ground_truth, **kw)
    try:
        out = [float(x) for x in out]
    except (TypeError, ValueError):
        raise RewardError(f"reward {getattr(fn, '__name__', fn)!r} must return a list of floats, "
                          f"got {type(out).__name__}") from None
    if len(out) != len(completions):
        raise RewardError(f"reward {getattr(fn, '__name__', fn)!r} returned {len(out)} scores for "
                          f"{len(completions)} completions")
    bad = [i for i, x in enumerate(out) if x != x or x in (float("inf"), float("-inf"))]
    if bad:
        raise RewardError(f"reward returned a non-finite score at row {bad[0]}")
    return out
