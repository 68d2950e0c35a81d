"""Training/eval data in the paper's row format (OpenR1 / verl), loaded with validation.

A row (see `training.task` for a full example)::

    prompt        list of chat messages [{"role": ..., "content": str}, ...]  (non-empty)
    target        [{"role": "assistant", "content": <demonstration>}]         (non-empty string)
    reward_model  {"ground_truth": str, "style": "rule"}
    data_source   str (optional);  extra_info {"level": ..., "index": ...} (optional)

`load_examples(path)` reads jsonl / json / parquet and raises `DataError` naming the file, the
row and the field for any malformed row. `Example` is what the trainer consumes.

Any other table (``--dataset``: a local jsonl / json / parquet / csv file, a directory written by
``datasets``' ``save_to_disk``, or a Hugging Face dataset name, offline from the local cache) is
read with a column mapping (``--prompt-column``, ``--answer-column``, ``--demo-column``)::

    examples = load_dataset("openai/gsm8k", "train", Columns(prompt="question", answer="answer"))

A column holds plain text or chat messages ([{"role", "content"}, ...]); a dotted name reaches into
a nested field (``reward_model.ground_truth``). `load_dataset` raises `DataError` naming the
column, the source and its columns when a column is missing, and the row for a bad row.
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


def test_examples(per_level: int | dict = task.TEST_PER_LEVEL) -> list[Example]:
    """The built-in test split (``per_level`` problems of each level) as `Example` s."""
    return [from_problem(p, f"arith-test:{i}") for i, p in enumerate(task.test_problems(per_level))]


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


# ------------------------------------------------------------------- any table, mapped columns

@dataclass(frozen=True)
class Columns:
    """Which column of a table holds what. ``prompt``: text or chat messages (a conversation
    that ends with assistant turns is taken up to them); ``answer``: the verifier's ground truth;
    ``demo``: the demonstration, text or chat messages (its last assistant message); empty = the
    table has none (presets that train on demonstrations refuse it)."""

    prompt: str = "prompt"
    answer: str = "answer"
    demo: str = ""

    def named(self) -> dict:
        """flag → column, of the columns in use."""
        return {f"--{k}-column": v for k, v in
                (("prompt", self.prompt), ("answer", self.answer), ("demo", self.demo)) if v}


def _json_rows(path: Path) -> tuple[list[dict], list[str]]:
    rows = read_rows(path)  # our own reader: a line that is not JSON is named by its row
    return rows, list(dict.fromkeys(k for r in rows if isinstance(r, dict) for k in r))


def _arrow_rows(reader: str):
    def read(path: Path) -> tuple[list[dict], list[str]]:
        import datasets

        table = getattr(datasets.Dataset, reader)(str(path))
        return table.to_list(), list(table.column_names)
    return read


# file suffix -> reader of (rows, column names)
FILE_READERS = {".jsonl": _json_rows, ".json": _json_rows, ".parquet": _arrow_rows("from_parquet"),
                ".csv": _arrow_rows("from_csv")}


def read_table(source: str, split: str = "train", config: str = "") -> tuple[list[dict], list[str]]:
    """(rows, column names) of ``source``: a local file (by suffix: `FILE_READERS`; its one
    split is ``train``), a ``save_to_disk`` directory, or a Hugging Face dataset name (its
    ``config`` when not empty, its ``split``), read with ``datasets``; offline
    (``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``) a name must be in the local cache."""
    import datasets

    path = Path(source).expanduser()
    one_split = path.is_file() or path.is_dir() and not (path / "dataset_dict.json").exists()
    if one_split and split != "train":
        raise DataError(f"{source}: has one split, 'train', not {split!r} (for held-out rows with "
                        "the same columns give their file: --eval-split FILE)")
    if path.is_file():
        if path.suffix not in FILE_READERS:
            raise DataError(f"{source}: unknown file type {path.suffix!r} (one of {', '.join(FILE_READERS)})")
        try:
            return FILE_READERS[path.suffix](path)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - pyarrow/datasets raise many types; named here
            raise DataError(f"{source}: cannot be read ({type(e).__name__}: {e})") from None
    if not path.is_dir() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise DataError(f"{source}: no such file or directory")
    try:
        table = (datasets.load_from_disk(str(path)) if path.is_dir()
                 else datasets.load_dataset(source, config or None, split=split))
    except ConnectionError as e:
        from datasets import config

        raise DataError(
            f"{source}: not a local file, and the Hugging Face dataset is not in the local cache "
            f"({config.HF_DATASETS_CACHE}) while offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE): "
            "load it once where there is network (with HF_DATASETS_OFFLINE=0), or pass a local "
            f"file ({e})") from None
    except Exception as e:  # noqa: BLE001 - datasets raises many types; the message says which
        raise DataError(f"{source}: cannot be read with datasets ({type(e).__name__}: {e})") from None
    if isinstance(table, datasets.DatasetDict):
        if split not in table:
            raise DataError(f"{source}: no split {split!r} (splits: {', '.join(table)})")
        table = table[split]
    return table.to_list(), list(table.column_names)


def _lookup(row: dict, column: str, source: str, index: int):
    value = row
    for i, part in enumerate(column.split(".")):
        if not isinstance(value, dict) or part not in value:
            _fail(source, index, column, "is missing" if i == 0 else f"has no field {part!r}")
        value = value[part]
    if value is None:
        _fail(source, index, column, "is empty (null)")
    return value


def _text_or_messages(value, source: str, index: int, column: str) -> tuple:
    """A column's value as chat messages: text is one user message."""
    if isinstance(value, str):
        if not value.strip():
            _fail(source, index, column, "is an empty string")
        return ({"role": "user", "content": value},)
    if isinstance(value, (list, tuple)):
        return _messages(value, source, index, column)
    _fail(source, index, column, f"must be text or a list of chat messages, got {type(value).__name__}")


def example_from_columns(row: dict, cols: Columns, source: str, index: int, uid: str) -> Example:
    """One row of any table as an `Example`, its columns named by ``cols`` (``source`` and
    ``index`` name the row in errors)."""
    if not isinstance(row, dict):
        _fail(source, index, "<row>", "must be an object")
    messages = _text_or_messages(_lookup(row, cols.prompt, source, index), source, index, cols.prompt)
    while len(messages) > 1 and messages[-1]["role"] == "assistant":  # a whole conversation
        messages = messages[:-1]
    if messages[-1]["role"] == "assistant":
        _fail(source, index, cols.prompt, "has only assistant messages (no prompt)")
    truth = _lookup(row, cols.answer, source, index)
    if isinstance(truth, bool) or not isinstance(truth, (str, int, float)) or not str(truth).strip():
        _fail(source, index, cols.answer, f"must be a non-empty string (or number), got {truth!r:.60}")
    return Example(uid, messages, _demo(row, cols.demo, source, index), str(truth), "all")


def _demo(row: dict, column: str, source: str, index: int) -> str:
    """The demonstration: the column's text, or its last assistant message; "" without a column."""
    if not column:
        return ""
    value = _lookup(row, column, source, index)
    if isinstance(value, str):
        said = [value]
    else:
        said = [m["content"] for m in _text_or_messages(value, source, index, column)
                if m["role"] == "assistant"]
    if not said or not said[-1].strip():
        _fail(source, index, column, "has no demonstration (an empty text or no assistant message)")
    return said[-1]


def eval_source(dataset: str, split: str) -> tuple[str, str]:
    """(source, split) of ``--eval-split``: a local file with the same columns is its own source
    (split "train"), any other value a split of ``--dataset``."""
    return (split, "train") if Path(split).expanduser().is_file() else (dataset, split)


def benchmark_name(dataset: str, split: str) -> str:
    """The evaluation's benchmark name for ``--eval-split``: the file's stem, or
    ``<dataset>-<split>``."""
    source, split = eval_source(dataset, split)
    return Path(source).stem if source != dataset else f"{Path(dataset).stem}-{split}"


def load_dataset(source: str, split: str, cols: Columns, config: str = "") -> list[Example]:
    """Validated examples of any table (`read_table`) through the column mapping ``cols``; a
    missing column names the column, its flag, the source and the columns it has; a bad row
    names the row."""
    rows, names = read_table(source, split, config)
    local = Path(source).expanduser().is_file()
    where = source if local else f"{source} (split {split!r})"
    prefix = Path(source).name if local else f"{source}:{split}"
    if not rows:
        raise DataError(f"{where}: contains no rows")
    for flag, column in cols.named().items():
        if column.split(".")[0] not in names:
            raise DataError(f"{where}: no column {column!r} ({flag}); its columns: {', '.join(names)}")
    return [example_from_columns(r, cols, where, i, f"{prefix}:{i}") for i, r in enumerate(rows)]


# ------------------------------------------------------------------------------- data order

@dataclass
class TaskStream:
    """The built-in task's training stream: problem ``cursor`` of stream ``seed``, skipping any
    that equals a held-out (test or validation) problem, with demonstrations in the style of the
    task variant ``variant``. ``cursor`` is the whole state (saved in checkpoints)."""

    seed: int
    cursor: int = 0
    variant: str = "arith"

    def take(self, k: int) -> list[Example]:
        out = []
        held_out = task.held_out_exprs()
        style = task.get_variant(self.variant).demo_style
        while len(out) < k:
            p = task.make_problem(self.seed, self.cursor, style=style)
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
