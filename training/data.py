"""Training/eval data in the paper's row format (OpenR1 / verl), loaded with validation.

A row (see `training.task` for a full example)::

    prompt        list of chat messages [{"role": ..., "content": str}, ...]  (non-empty)
    target        [{"role": "assistant", "content": <demonstration>}]         (non-empty string)
    reward_model  {"ground_truth": str, "style": "rule"}
    data_source   str (optional);  extra_info {"level": ..., "index": ...} (optional)

`load_examples(path)` reads jsonl / json / parquet and raises `DataError` naming the file, the
row and the field for any malformed row. `Example` is what the trainer consumes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import task


class DataError(ValueError):
    """A malformed training-data row; the message names file, row and field."""


@dataclass(frozen=True)
class Example:
    """One prompt with its demonstration and verifiable answer."""

    uid: str
    messages: tuple
    demo: str
    answer: str
    level: str

    @property
    def ground_truth(self) -> str:
        return self.answer


def from_problem(p: task.Problem, uid: str) -> Example:
    """A built-in task problem as an `Example`."""
    return Example(uid, ({"role": "user", "content": p.prompt},), p.demo, str(p.answer), str(p.level))


def _fail(source: str, row: int, field: str, why: str):
    raise DataError(f"{source}: row {row}: field {field!r} {why}")


def _messages(value, source: str, row: int, field: str) -> tuple:
    if not isinstance(value, (list, tuple)) or not value:
        _fail(source, row, field, "must be a non-empty list of chat messages")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) \
                or not isinstance(m.get("role"), str):
            _fail(source, row, f"{field}[{j}]", "must be {'role': str, 'content': str}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["content"].strip() for m in out):
        _fail(source, row, field, "is empty (no message has content)")
    return tuple(out)


def example_from_row(row: dict, source: str, index: int) -> Example:
    """Validate one row and turn it into an `Example` (``source``/``index`` name it in errors)."""
    if not isinstance(row, dict):
        _fail(source, index, "<row>", "must be an object")
    for f in ("prompt", "target", "reward_model"):
        if row.get(f) is None:
            _fail(source, index, f, "is missing")
    messages = _messages(row["prompt"], source, index, "prompt")
    target = _messages(row["target"], source, index, "target")
    if not target[0]["content"].strip():
        _fail(source, index, "target[0].content", "is an empty demonstration")
    rm = row["reward_model"]
    if not isinstance(rm, dict) or "ground_truth" not in rm:
        _fail(source, index, "reward_model.ground_truth", "is missing")
    truth = rm["ground_truth"]
    if isinstance(truth, bool) or not isinstance(truth, (str, int, float)):
        _fail(source, index, "reward_model.ground_truth",
              f"must be a string (or number), got {type(truth).__name__}")
    if isinstance(truth, str) and not truth.strip():
        _fail(source, index, "reward_model.ground_truth", "is an empty string")
    extra = row.get("extra_info") or {}
    level = extra.get("level", row.get("data_source", "all")) if isinstance(extra, dict) else "all"
    uid = f"{Path(source).name}:{extra.get('index', index) if isinstance(extra, dict) else index}"
    return Example(uid, messages, target[0]["content"], str(truth), str(level))


def read_rows(path) -> list[dict]:
    """Raw rows of a jsonl / json / parquet file (``datasets`` reads them, offline)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import datasets

        return datasets.Dataset.from_parquet(str(path)).to_list()
    import json

    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    out = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: row {i}: not valid JSON ({e.msg})") from None
    return out


def load_examples(path) -> list[Example]:
    """Validated examples of a data file; raises `DataError` (file, row, field) on a bad row."""
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: contains no rows")
    return [example_from_row(r, str(path), i) for i, r in enumerate(rows)]


# ------------------------------------------------------------------------------- data order

@dataclass
class TaskStream:
    """The built-in task's training stream: problem ``cursor`` of stream ``seed``, skipping any
    that equals a held-out (test or validation) problem. ``cursor`` is the whole state (saved in checkpoints)."""

    seed: int
    cursor: int = 0

    def take(self, k: int) -> list[Example]:
        out = []
        held_out = task.held_out_exprs()
        while len(out) < k:
            p = task.make_problem(self.seed, self.cursor)
            if p.expr not in held_out:
                out.append(from_problem(p, f"arith:{self.seed}:{self.cursor}"))
            self.cursor += 1
        return out


@dataclass
class FileStream:
    """Examples of a file in epochs, each epoch a permutation seeded by (seed, epoch); the state
    is the number of examples taken (``cursor``)."""

    examples: list
    seed: int
    cursor: int = 0

    def take(self, k: int) -> list[Example]:
        import torch

        n = len(self.examples)
        out = []
        for _ in range(k):
            epoch, pos = divmod(self.cursor, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
            out.append(self.examples[int(order[pos])])
            self.cursor += 1
        return out
