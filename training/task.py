"""The built-in verifiable task: arithmetic expressions in five difficulty levels.

Every problem has a worked, step-by-step demonstration ending in ``\\boxed{answer}`` (the analog
of the paper's DeepSeek-R1 traces) and is exposed in the paper's training-data row format
(OpenR1 / verl style)::

    {"data_source": "upge/arith", "prompt": [{"role": "user", "content": "Compute 3+4*2."}],
     "target": [{"role": "assistant", "content": "4*2=8\\n3+8=11\\n\\boxed{11}"}],
     "ability": "math", "reward_model": {"ground_truth": "11", "style": "rule"},
     "extra_info": {"index": 7, "split": "train", "level": 3}}

Levels (each adds one step or one precedence rule):

=====  ==================  =========================================
level  form                steps of the demonstration
=====  ==================  =========================================
1      a+b                 1
2      a+b-c               2 (left to right)
3      a+b*c               2 (multiplication first)
4      (a+b)*c-d           3 (parentheses first)
5      a*b+c*d-e           4 (two products, then left to right)
=====  ==================  =========================================

Problems are a pure function of (seed, index), so the data order is reproducible and a resumed
run continues with the same problems. Two held-out splits are fixed: ``test`` (``TEST_SEED``,
what results are reported on) and ``validation`` (``VALIDATION_SEED``, what hyper-parameters are
tuned on, `training.compare --tune`); they share no expression, and no training problem equals a
problem of either.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

TASK_VERSION = "arith-v1"
DATA_SOURCE = "upge/arith"
LEVELS = (1, 2, 3, 4, 5)
TEST_SEED = 10_000_019
TEST_PER_LEVEL = 40
VALIDATION_SEED = 20_000_003
VALIDATION_PER_LEVEL = 20
HELD_OUT_SPLITS = (TEST_SEED, TEST_PER_LEVEL, VALIDATION_SEED, VALIDATION_PER_LEVEL)  # in cache keys
PROMPT_TEMPLATE = "Compute {expr}."


@dataclass(frozen=True)
class Problem:
    """One problem: ``expr`` to evaluate, its ``answer`` and the worked ``demo`` (steps + box)."""

    expr: str
    answer: int
    demo: str
    level: int

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(expr=self.expr)


def _steps(pairs: list[tuple[str, int]], answer: int) -> str:
    return "".join(f"{lhs}={val}\n" for lhs, val in pairs) + f"\\boxed{{{answer}}}"


def _level1(r: random.Random) -> Problem:
    a, b = r.randrange(10), r.randrange(10)
    return Problem(f"{a}+{b}", a + b, _steps([(f"{a}+{b}", a + b)], a + b), 1)


def _level2(r: random.Random) -> Problem:
    a, b, c = r.randrange(10), r.randrange(10), r.randrange(10)
    s = a + b
    return Problem(f"{a}+{b}-{c}", s - c, _steps([(f"{a}+{b}", s), (f"{s}-{c}", s - c)], s - c), 2)


def _level3(r: random.Random) -> Problem:
    a, b, c = r.randrange(10), r.randrange(10), r.randrange(10)
    p = b * c
    return Problem(f"{a}+{b}*{c}", a + p, _steps([(f"{b}*{c}", p), (f"{a}+{p}", a + p)], a + p), 3)


def _level4(r: random.Random) -> Problem:
    a, b, c, d = r.randrange(10), r.randrange(10), r.randrange(2, 10), r.randrange(10)
    s = a + b
    p = s * c
    steps = [(f"{a}+{b}", s), (f"{s}*{c}", p), (f"{p}-{d}", p - d)]
    return Problem(f"({a}+{b})*{c}-{d}", p - d, _steps(steps, p - d), 4)


def _level5(r: random.Random) -> Problem:
    a, b, c, d = (r.randrange(2, 10) for _ in range(4))
    e = r.randrange(10)
    p, q = a * b, c * d
    steps = [(f"{a}*{b}", p), (f"{c}*{d}", q), (f"{p}+{q}", p + q), (f"{p + q}-{e}", p + q - e)]
    return Problem(f"{a}*{b}+{c}*{d}-{e}", p + q - e, _steps(steps, p + q - e), 5)


GENERATORS: dict[int, Callable[[random.Random], Problem]] = {
    1: _level1, 2: _level2, 3: _level3, 4: _level4, 5: _level5}


def make_problem(seed: int, index: int, levels: tuple = LEVELS) -> Problem:
    """Problem number ``index`` of the stream ``seed``: its level cycles through ``levels`` and its
    numbers come from a generator seeded by (seed, index) alone."""
    level = levels[index % len(levels)]
    return GENERATORS[level](random.Random(f"{TASK_VERSION}:{seed}:{index}"))


def _held_out(seed: int, per_level: int, exclude: frozenset = frozenset()) -> list[Problem]:
    """``per_level`` distinct problems of each level from stream ``seed``, none in ``exclude``."""
    out, seen, i = [], set(exclude), 0
    counts = {lv: 0 for lv in LEVELS}
    while min(counts.values()) < per_level:
        p = make_problem(seed, i)
        i += 1
        if p.expr in seen or counts[p.level] >= per_level:
            continue
        seen.add(p.expr)
        counts[p.level] += 1
        out.append(p)
    return sorted(out, key=lambda p: p.level)


def test_problems(per_level: int = TEST_PER_LEVEL) -> list[Problem]:
    """The fixed held-out test split: ``per_level`` distinct problems of each level."""
    return _held_out(TEST_SEED, per_level)


def validation_problems(per_level: int = VALIDATION_PER_LEVEL) -> list[Problem]:
    """The fixed validation split (for tuning): ``per_level`` distinct problems of each level,
    none equal to a test problem."""
    return _held_out(VALIDATION_SEED, per_level, frozenset(p.expr for p in test_problems()))


def train_problems(seed: int, count: int, start: int = 0, levels: tuple = LEVELS,
                   exclude: frozenset | None = None) -> list[Problem]:
    """Training problems ``start .. start+count−1`` of stream ``seed``, skipping any problem whose
    expression is in a held-out split (indices stay fixed, so ``start`` is a stable data cursor)."""
    exclude = held_out_exprs() if exclude is None else exclude
    out, i = [], start
    while len(out) < count:
        p = make_problem(seed, i, levels)
        i += 1
        if p.expr not in exclude:
            out.append(p)
    return out


_HELD_OUT: frozenset | None = None


def held_out_exprs() -> frozenset:
    """Every expression of the test and validation splits (never trained on)."""
    global _HELD_OUT
    if _HELD_OUT is None:
        _HELD_OUT = frozenset(p.expr for p in test_problems() + validation_problems())
    return _HELD_OUT


def to_row(p: Problem, index: int, split: str) -> dict:
    """The problem as one row of the paper's training-data format (OpenR1 / verl)."""
    return {"data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": p.prompt}],
            "target": [{"role": "assistant", "content": p.demo}],
            "ability": "math",
            "reward_model": {"ground_truth": str(p.answer), "style": "rule"},
            "extra_info": {"index": index, "split": split, "level": p.level}}


def rows(problems: list[Problem], split: str) -> list[dict]:
    return [to_row(p, i, split) for i, p in enumerate(problems)]


SPLITS = ("train", "validation", "test")


def split_problems(split: str = "test", count: int = 1000, seed: int = 0) -> list[Problem]:
    """The held-out ``test`` or ``validation`` problems, or ``count`` ``train`` problems of stream
    ``seed`` (at most ``count`` either way)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    held = {"test": test_problems, "validation": validation_problems}
    return held[split]()[:count] if split in held else train_problems(seed, count)


def dataset(split: str = "test", count: int = 1000, seed: int = 0):
    """The task as a ``datasets.Dataset`` in row format (``split`` one of `SPLITS`)."""
    import datasets

    return datasets.Dataset.from_list(rows(split_problems(split, count, seed), split))


def export(path, split: str = "train", count: int = 1000, seed: int = 0) -> None:
    """Write the split as jsonl or parquet (by suffix), loadable by `training.data.load_examples`
    (jsonl needs only the standard library)."""
    if str(path).endswith(".parquet"):
        dataset(split, count, seed).to_parquet(str(path))
        return
    import json

    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows(split_problems(split, count, seed), split))
