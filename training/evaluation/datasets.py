"""The paper's evaluation benchmarks, read from the copied files as they are (see
``data/hpt_eval/PROVENANCE.md`` in the shared folder) and normalised to one row type.

    probs = load_benchmark("aime24")                  # 30 problems (LUFFY copy, the paper's layout)
    probs = load_benchmark("olympiad", source="hpt")  # 674 problems (the official repo's json)
    rows  = load_file("LUFFY/data/valid.all.parquet") # 6023 rows, one per file row (avg@32 layout)

A `Problem` is ``(benchmark, id, question, answer, kind, choices, system, source, row)`` with
``kind`` 'math' (graded by the boxed-answer verifier) or 'mc' (a letter/digit among ``choices``).

Sources: ``luffy`` (default) is the layout LUFFY and HPT evaluated with — AIME24/25 and AMC
repeated 32 times in ``valid.all.parquet`` (collapsed here to unique problems; the repeats are
checked identical), AMC = AMC12 2022+2023 (83), Olympiad 675, plus GPQA-Diamond and ARC-c. ``hpt``
is the official repo's json files (AMC23 = 40 problems, Olympiad 674, no ARC-c).

The data directory is ``$UPGE_EVAL_DATA`` if set, else ``../shared/data/hpt_eval`` relative to
the repository root. Normalisation: a ground truth written as a whole ``\\boxed{X}`` (the
official AIME24 json) becomes ``X`` (the file's text is kept in ``raw_answer``).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

ENV_VAR = "UPGE_EVAL_DATA"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "hpt_eval"
SOURCES = ("luffy", "hpt")

ALL_MATH = "LUFFY/data/valid.all.parquet"


class BenchmarkError(ValueError):
    """Missing data directory/file, unknown benchmark, or a malformed row (file, row, field named)."""


@dataclass(frozen=True)
class Problem:
    """One evaluation problem.

    benchmark: short name (aime24, ..., arc_c); id: stable id within the benchmark;
    question: the user text as in the file; answer: ground truth (letter/digit for 'mc');
    kind: 'math' | 'mc'; choices: option labels of an 'mc' question (e.g. ('A','B','C','D'));
    system: the file's system message ('' if none); source: file relative to the data dir;
    row: 0-based row of the file; raw_answer: the ground truth exactly as in the file."""

    benchmark: str
    id: str
    question: str
    answer: str
    kind: str
    choices: tuple = ()
    system: str = ""
    source: str = ""
    row: int = 0
    raw_answer: str = ""


@dataclass(frozen=True)
class Spec:
    """Where a benchmark lives in each source: (file, data_source filter or None)."""

    kind: str
    display: str
    paper_n: int
    files: dict


# Literal table: benchmark -> kind, the paper's column name, its avg@n, and its files per source.
BENCHMARKS: dict = {
    "aime24": Spec("math", "AIME24", 32, {"luffy": (ALL_MATH, "aime"),
                                           "hpt": ("Unify-Post-Training/data/AIME24/test.json", None)}),
    "aime25": Spec("math", "AIME25", 32, {"luffy": (ALL_MATH, "aime25"),
                                           "hpt": ("Unify-Post-Training/data/AIME25/test.json", None)}),
    "amc": Spec("math", "AMC", 32, {"luffy": (ALL_MATH, "amc"),
                                     "hpt": ("Unify-Post-Training/data/AMC23/test.json", None)}),
    "math500": Spec("math", "MATH-500", 1, {"luffy": (ALL_MATH, "math"),
                                             "hpt": ("Unify-Post-Training/data/MATH-500/test.json", None)}),
    "minerva": Spec("math", "Minerva", 1, {"luffy": (ALL_MATH, "minerva"),
                                            "hpt": ("Unify-Post-Training/data/Minerva/test.json", None)}),
    "olympiad": Spec("math", "Olympiad", 1, {"luffy": (ALL_MATH, "olympiad_bench"),
                                              "hpt": ("Unify-Post-Training/data/Olympiad-Bench/test.json", None)}),
    "gpqa": Spec("mc", "GPQA", 1, {"luffy": ("LUFFY/data/valid.gpqa.parquet", None),
                                    "hpt": ("Unify-Post-Training/data/GPQA/test.json", None)}),
    "arc_c": Spec("mc", "ARC-c", 1, {"luffy": ("LUFFY/data/valid.arc_c.parquet", None)}),
}
ID_BENCHMARKS = ("aime24", "aime25", "amc", "math500", "minerva", "olympiad")
OOD_BENCHMARKS = ("arc_c", "gpqa")

# data_source (LUFFY parquet) or directory name (official json) -> our benchmark name
_NAME_OF = {"aime": "aime24", "aime25": "aime25", "amc": "amc", "math": "math500",
            "minerva": "minerva", "olympiad_bench": "olympiad", "gpqa": "gpqa", "arc_c": "arc_c",
            "AIME24": "aime24", "AIME25": "aime25", "AMC23": "amc", "MATH-500": "math500",
            "Minerva": "minerva", "Olympiad-Bench": "olympiad", "GPQA": "gpqa"}
_CHOICE_LINE = re.compile(r"^\s*\(?([A-J]|[1-9])[\)\.:]\s", re.M)
_WHOLE_BOX = re.compile(r"^\s*\\boxed\{(.*)\}\s*$", re.S)


# ------------------------------------------------------------------------------- locations

def data_dir(path: Optional[str] = None) -> Path:
    """The evaluation data directory: ``path`` (a --data-dir flag), else $UPGE_EVAL_DATA, else
    the shared folder next to the repository. Raises `BenchmarkError` naming it if absent."""
    chosen = path or os.environ.get(ENV_VAR) or str(DEFAULT_DATA_DIR)
    how = "--data-dir" if path else (f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "the default")
    d = Path(chosen)
    if not d.is_dir():
        raise BenchmarkError(
            f"evaluation data directory {d} (from {how}) does not exist. Point {ENV_VAR} or "
            f"--data-dir at the folder holding LUFFY/ and Unify-Post-Training/ (the copies listed "
            f"in data/hpt_eval/PROVENANCE.md of the shared folder).")
    return d


def benchmark_names() -> list[str]:
    return list(BENCHMARKS)


def parse_names(text: str) -> list[str]:
    """'aime24,gpqa' -> ['aime24', 'gpqa'] ('all', 'id', 'ood' expand); unknown names raise."""
    out: list[str] = []
    groups = {"all": list(BENCHMARKS), "id": list(ID_BENCHMARKS), "ood": list(OOD_BENCHMARKS)}
    for name in (s.strip() for s in text.split(",") if s.strip()):
        if name in groups:
            out += groups[name]
        elif name in BENCHMARKS:
            out.append(name)
        else:
            raise BenchmarkError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)} "
                                 "(or all, id, ood)")
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- raw reading

def _read(path: Path) -> list[dict]:
    if not path.is_file():
        raise BenchmarkError(f"{path}: no such file (see PROVENANCE.md in the data directory)")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).read().to_pylist()  # (read_table's dataset layer: ~4 s slower)
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list):
        raise BenchmarkError(f"{path}: expected a JSON array of objects")
    return rows


def _fail(source: str, row: int, field: str, why: str):
    raise BenchmarkError(f"{source}: row {row}: field {field!r} {why}")


def _answer(value, source: str, row: int, field: str) -> str:
    """The ground truth as one string; a list or empty value is refused with a clear message."""
    if isinstance(value, (list, tuple)):
        _fail(source, row, field, f"is a list ({list(value)[:3]!r}); a benchmark row needs one "
              "ground-truth string. Write alternatives as one answer (e.g. '1, 2' for a set), or "
              "split the row into one row per accepted answer")
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int, float)):
        _fail(source, row, field, f"must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        _fail(source, row, field, "is empty")
    return text


def _unbox(answer: str) -> str:
    m = _WHOLE_BOX.match(answer)
    return m.group(1).strip() if m else answer


def _choices(question: str) -> tuple:
    """Option labels of a multiple-choice question: the letters of lines starting 'A)', 'A.',
    ..., or, when no line starts with a letter, the digits of lines starting '1)', ... (ARC-c
    numbers some options). Numbered lines inside lettered options (GPQA's reagent steps
    "1. NaNH2 ...") are therefore not options. Sorted."""
    labels = _CHOICE_LINE.findall(question)
    letters = {x for x in labels if not x.isdigit()}
    return tuple(sorted(letters or set(labels)))


def _messages(row: dict, source: str, i: int) -> tuple[str, str]:
    """(system, user) texts of a verl ``prompt`` message list."""
    msgs = row.get("prompt")
    if msgs is None or not len(msgs):
        _fail(source, i, "prompt", "is missing or empty")
    system = "".join(m["content"] for m in msgs if m.get("role") == "system")
    users = [m["content"] for m in msgs if m.get("role") == "user"]
    if not users or not users[-1].strip():
        _fail(source, i, "prompt", "has no user message")
    return system, users[-1]


def _from_parquet_row(row: dict, source: str, i: int) -> Problem:
    system, question = _messages(row, source, i)
    name = _NAME_OF.get(row.get("data_source"), str(row.get("data_source")))
    rm = row.get("reward_model")
    if not isinstance(rm, dict) or "ground_truth" not in rm:
        _fail(source, i, "reward_model.ground_truth", "is missing")
    raw = _answer(rm["ground_truth"], source, i, "reward_model.ground_truth")
    extra = row.get("extra_info") or {}
    pid = f"{name}-{extra.get('index', i)}"
    return _make(name, pid, question, raw, system, source, i)


def _from_json_row(row: dict, source: str, i: int) -> Problem:
    name = _NAME_OF[Path(source).parent.name]
    if not isinstance(row, dict):
        _fail(source, i, "<row>", "must be an object")
    question = row.get("prompt")
    if not isinstance(question, str) or not question.strip():
        _fail(source, i, "prompt", "is missing or not a string")
    raw = _answer(row.get("answer"), source, i, "answer")
    return _make(name, f"{name}-{row.get('id', i)}", question, raw, "", source, i)


def _make(name, pid, question, raw, system, source, i) -> Problem:
    kind = BENCHMARKS[name].kind if name in BENCHMARKS else "math"
    choices = _choices(question) if kind == "mc" else ()
    if kind == "mc" and raw not in choices:
        _fail(source, i, "answer", f"{raw!r} is not one of the question's options {choices}")
    return Problem(name, pid, question, _unbox(raw), kind, choices, system, source, i, raw)


def load_file(relpath: str, data: Optional[str] = None) -> list[Problem]:
    """One normalised `Problem` per row of a data file (relative to the data dir), as it is:
    ``LUFFY/data/valid.all.parquet`` gives 6023 rows, its 32 repeats of each AIME problem included."""
    path = data_dir(data) / relpath
    st = path.stat() if path.is_file() else None
    return list(_load_file(str(path.resolve()), relpath, st and (st.st_size, st.st_mtime_ns)))


@lru_cache(maxsize=16)
def _load_file(path: str, relpath: str, signature) -> tuple:
    rows = _read(Path(path))
    convert = _from_parquet_row if path.endswith(".parquet") else _from_json_row
    return tuple(convert(r, relpath, i) for i, r in enumerate(rows))


# ----------------------------------------------------------------------------- benchmarks

def _unique(rows: list[Problem]) -> list[Problem]:
    """Collapse repeated rows of one problem (same id), checking the repeats are identical."""
    first: dict = {}
    for p in rows:
        q = first.setdefault(p.id, p)
        if (q.question, q.answer) != (p.question, p.answer):
            raise BenchmarkError(f"{p.source}: rows {q.row} and {p.row} share id {p.id} but differ")
    return list(first.values())


def load_benchmark(name: str, source: str = "luffy", data: Optional[str] = None,
                   limit: Optional[int] = None) -> list[Problem]:
    """The unique problems of benchmark ``name`` from ``source`` ('luffy' | 'hpt'), in file
    order; ``limit`` keeps the first N."""
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
    files = BENCHMARKS[name].files
    if source not in files:
        raise BenchmarkError(f"benchmark {name!r} has no {source!r} copy (available: "
                             f"{', '.join(files)}); use --source {next(iter(files))}")
    relpath, data_source = files[source]
    rows = [p for p in load_file(relpath, data) if data_source is None or p.benchmark == name]
    probs = _unique(rows)
    if not probs:
        raise BenchmarkError(f"{relpath}: no rows for benchmark {name!r}")
    return probs[:limit] if limit is not None else probs


def data_files() -> list[str]:
    """Every data file the loaders know (relative to the data dir), plus the older valid.parquet."""
    files = {f for spec in BENCHMARKS.values() for f, _ in spec.files.values()}
    return sorted(files | {"LUFFY/data/valid.parquet"})
