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
problem of either. Their sizes per level (`TEST_PER_LEVEL`, `VALIDATION_PER_LEVEL`) make the
test split's avg@k 95 % CI about 2 points; level 1 (``a+b``, one digit each) has only 100
distinct problems, so it holds fewer.

Two variants of the task (`VARIANTS`, ``training.run --task``) differ in how demonstrations are
written and in the base model that meets them:

* ``arith`` — demonstrations in the base's own concise style (above); the base is briefly
  pre-trained (weak: 6–7 % avg@4 of the test split at T = 0.6, 29 % of level 1).
* ``arith-offpolicy`` — the paper's regime: demonstrations in a different, longer style (a
  ``<think>`` block of worded steps, then ``The answer is \\boxed{..}``: the analog of
  DeepSeek-R1 traces for a Qwen base), and a base pre-trained longer on its own concise style,
  which solves a real share of its prompts (≈ 60 % at T = 1.0; 74 % avg@4 of the test split at
  T = 0.6, 98 % of level 1, 47 % of level 5). SFT must move the policy to another style; RL
  sharpens the base's own (docs/comparison.md).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable

TASK_VERSION = "arith-v1"
DATA_SOURCE = "upge/arith"
LEVELS = (1, 2, 3, 4, 5)
TEST_SEED = 10_000_019
TEST_PER_LEVEL = {1: 50, 2: 300, 3: 300, 4: 300, 5: 300}
VALIDATION_SEED = 20_000_003
VALIDATION_PER_LEVEL = {1: 20, 2: 100, 3: 100, 4: 100, 5: 100}
HELD_OUT_SPLITS = (TEST_SEED, sorted(TEST_PER_LEVEL.items()), VALIDATION_SEED,
                   sorted(VALIDATION_PER_LEVEL.items()))  # in cache keys
PROMPT_TEMPLATE = "Compute {expr}."


Steps = tuple[tuple[str, int], ...]


def concise(steps: Steps, answer: int) -> str:
    """The base's own style: one ``lhs=value`` line per step, then the boxed answer."""
    return "".join(f"{lhs}={val}\n" for lhs, val in steps) + f"\\boxed{{{answer}}}"


def verbose(steps: Steps, answer: int) -> str:
    """Another model's style (``arith-offpolicy``'s demonstrations): a ``<think>`` block of worded
    steps, then a sentence with the boxed answer — 2–4× longer than `concise`."""
    words = ["First"] + ["Then"] * max(0, len(steps) - 2) + ["Finally"] * (len(steps) > 1)
    body = "".join(f"{w}, {lhs} = {val}.\n" for w, (lhs, val) in zip(words, steps))
    return f"<think>\n{body}</think>\nThe answer is \\boxed{{{answer}}}."


STYLES: dict[str, Callable[[Steps, int], str]] = {"concise": concise, "verbose": verbose}


@dataclass(frozen=True)
class Problem:
    """One problem: ``expr`` to evaluate, its ``answer``, the worked ``steps`` (``(lhs, value)``
    pairs) and the demonstration ``demo`` written from them in ``style`` (a `STYLES` name)."""

    expr: str
    answer: int
    steps: Steps
    level: int
    style: str = "concise"

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(expr=self.expr)

    @property
    def demo(self) -> str:
        return STYLES[self.style](self.steps, self.answer)


def _level1(r: random.Random) -> Problem:
    a, b = r.randrange(10), r.randrange(10)
    return Problem(f"{a}+{b}", a + b, ((f"{a}+{b}", a + b),), 1)


def _level2(r: random.Random) -> Problem:
    a, b, c = r.randrange(10), r.randrange(10), r.randrange(10)
    s = a + b
    return Problem(f"{a}+{b}-{c}", s - c, ((f"{a}+{b}", s), (f"{s}-{c}", s - c)), 2)


def _level3(r: random.Random) -> Problem:
    a, b, c = r.randrange(10), r.randrange(10), r.randrange(10)
    p = b * c
    return Problem(f"{a}+{b}*{c}", a + p, ((f"{b}*{c}", p), (f"{a}+{p}", a + p)), 3)


def _level4(r: random.Random) -> Problem:
    a, b, c, d = r.randrange(10), r.randrange(10), r.randrange(2, 10), r.randrange(10)
    s = a + b
    p = s * c
    return Problem(f"({a}+{b})*{c}-{d}", p - d, ((f"{a}+{b}", s), (f"{s}*{c}", p), (f"{p}-{d}", p - d)), 4)


def _level5(r: random.Random) -> Problem:
    a, b, c, d = (r.randrange(2, 10) for _ in range(4))
    e = r.randrange(10)
    p, q = a * b, c * d
    steps = ((f"{a}*{b}", p), (f"{c}*{d}", q), (f"{p}+{q}", p + q), (f"{p + q}-{e}", p + q - e))
    return Problem(f"{a}*{b}+{c}*{d}-{e}", p + q - e, steps, 5)


GENERATORS: dict[int, Callable[[random.Random], Problem]] = {
    1: _level1, 2: _level2, 3: _level3, 4: _level4, 5: _level5}


def make_problem(seed: int, index: int, levels: tuple = LEVELS, style: str = "concise") -> Problem:
    """Problem number ``index`` of the stream ``seed``: its level cycles through ``levels`` and its
    numbers come from a generator seeded by (seed, index) alone; its demonstration is written in
    ``style`` (which changes nothing else)."""
    level = levels[index % len(levels)]
    p = GENERATORS[level](random.Random(f"{TASK_VERSION}:{seed}:{index}"))
    return p if style == p.style else replace(p, style=style)


def _held_out(seed: int, per_level: dict, exclude: frozenset = frozenset()) -> list[Problem]:
    """``per_level[level]`` distinct problems of each level from stream ``seed``, none in
    ``exclude``."""
    out, seen, i = [], set(exclude), 0
    counts = {lv: 0 for lv in LEVELS}
    while any(counts[lv] < per_level[lv] for lv in LEVELS):
        p = make_problem(seed, i)
        i += 1
        if p.expr in seen or counts[p.level] >= per_level[p.level]:
            continue
        seen.add(p.expr)
        counts[p.level] += 1
        out.append(p)
    return sorted(out, key=lambda p: p.level)


def _per_level(n: int | dict) -> dict:
    return n if isinstance(n, dict) else {lv: n for lv in LEVELS}


def test_problems(per_level: int | dict = TEST_PER_LEVEL) -> list[Problem]:
    """The fixed held-out test split: ``per_level`` distinct problems of each level (a number,
    or one per level)."""
    return _held_out(TEST_SEED, _per_level(per_level))


def validation_problems(per_level: int | dict = VALIDATION_PER_LEVEL) -> list[Problem]:
    """The fixed validation split (for tuning): ``per_level`` distinct problems of each level,
    none equal to a test problem."""
    return _held_out(VALIDATION_SEED, _per_level(per_level), frozenset(p.expr for p in test_problems()))


def train_problems(seed: int, count: int, start: int = 0, levels: tuple = LEVELS,
                   exclude: frozenset | None = None, style: str = "concise") -> list[Problem]:
    """Training problems ``start .. start+count−1`` of stream ``seed``, skipping any problem whose
    expression is in a held-out split (indices stay fixed, so ``start`` is a stable data cursor)."""
    exclude = held_out_exprs() if exclude is None else exclude
    out, i = [], start
    while len(out) < count:
        p = make_problem(seed, i, levels, style)
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


def split_problems(split: str = "test", count: int | None = None, seed: int = 0,
                   variant: str = "arith") -> list[Problem]:
    """The held-out ``test`` or ``validation`` problems (the first ``count``; default all), or
    ``count`` (default 1000) ``train`` problems of stream ``seed``, with demonstrations in
    ``variant``'s style."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    style = get_variant(variant).demo_style
    held = {"test": test_problems, "validation": validation_problems}
    if split not in held:
        return train_problems(seed, 1000 if count is None else count, style=style)
    return [replace(p, style=style) for p in held[split]()[:count]]


def dataset(split: str = "test", count: int | None = None, seed: int = 0, variant: str = "arith"):
    """The task as a ``datasets.Dataset`` in row format (``split`` one of `SPLITS`)."""
    import datasets

    return datasets.Dataset.from_list(rows(split_problems(split, count, seed, variant), split))


def export(path, split: str = "train", count: int | None = None, seed: int = 0, variant: str = "arith") -> None:
    """Write the split as jsonl or parquet (by suffix), loadable by `training.data.load_examples`
    (jsonl needs only the standard library)."""
    if str(path).endswith(".parquet"):
        dataset(split, count, seed, variant).to_parquet(str(path))
        return
    import json

    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows(split_problems(split, count, seed, variant), split))


# ------------------------------------------------------------------------------ variants

@dataclass(frozen=True)
class Variant:
    """A variant of the task (``training.run --task``): the style its demonstrations are written
    in, the base model's pre-training recipe (`training.base.BaseConfig` fields that differ from
    the default) and the run settings it needs (explicit flags win)."""

    name: str
    demo_style: str
    base_recipe: tuple = ()      # ((BaseConfig field, value), ...)
    run_defaults: tuple = ()     # ((RunConfig field, value), ...)
    about: str = ""


VARIANTS = {v.name: v for v in (
    Variant("arith", "concise", about="demonstrations in the base's own style; a weak base"),
    Variant("arith-offpolicy", "verbose",
            base_recipe=(("pretrain_steps", 1200), ("max_positions", 256)),
            run_defaults=(("max_new_tokens", 128),),
            about="the paper's regime: demonstrations in another, longer style (an R1-trace "
                  "analog); a base that solves a real share of the easy levels at T = 1.0"),
)}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown task {name!r}; one of {', '.join(VARIANTS)}")
    return VARIANTS[name]
