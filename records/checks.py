"""Row checks for the record readers: the field-type tables and the readers that apply them.

A row type is a table ``{field: Kind}`` (:data:`EVAL_TYPES`, :data:`SAMPLE_TYPES`,
:data:`PROBE_TYPES`, :data:`METRIC_TYPES`); :func:`read_frame` reads one jsonl record file into a
frame, checking rows value by value only when a column does not already have its kind, and skips
each malformed row with a note naming the file, the line and the field (:class:`records.Notes`).
With them the small pieces every loader shares: :func:`frame` (rows -> a frame with at least the
given columns), :func:`read_object` (a JSON object file, or {} with a note) and
:func:`note_texts`. Pandas only; :mod:`records.tables` builds its loaders on these.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd
from pandas.api import types as ptypes

import records
from records.passk import verdict


def frame(rows: list[dict], columns: Iterable[str] = ()) -> pd.DataFrame:
    """DataFrame of record rows with at least ``columns`` (missing ones become NaN)."""
    df = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    for col in columns:
        if col not in df.columns:
            df[col] = math.nan
    return df


# ------------------------------------------------------------------------- row checks
# A row type is a table {field: Kind}. A kind parses one value (returns it, or raises
# ValueError saying what is wrong) and knows the pandas dtypes of a column that needs no
# checking value by value. Other fields of a row are kept as they are.


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("is not a number")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("is not a number")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError("is not an integer")
    return int(value)


def _label(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("is not a string")
    return str(value)


def _boolean(value: Any) -> bool:
    ok = verdict(value)
    if ok is None:
        raise ValueError("is not true or false")
    return ok


@dataclass(frozen=True)
class Kind:
    """What one field holds: ``parse`` for one value, ``column_ok`` for a whole column."""

    parse: Callable[[Any], Any]
    column_ok: Callable[[pd.Series], bool]
    required: bool = True
    default: Any = math.nan

    def __call__(self, value: Any) -> Any:
        if value is None:
            if self.required:
                raise ValueError("is missing")
            return self.default
        return self.parse(value)

    def fits(self, column: pd.Series) -> bool:
        """The whole column is of this kind already (all missing: only if optional)."""
        missing = column.isna()
        return not self.required and bool(missing.all()) or (
            self.column_ok(column) and (not self.required or not missing.any()))


number = Kind(_number, lambda c: ptypes.is_numeric_dtype(c) and not ptypes.is_bool_dtype(c))
integer = Kind(_integer, ptypes.is_integer_dtype)  # a step, a k: never NaN or inf
label = Kind(_label, ptypes.is_string_dtype)     # JSON strings (or integers, as text)
boolean = Kind(_boolean, ptypes.is_bool_dtype)   # true/false: the string "false" is not one


def optional(kind: Kind, default: Any = math.nan) -> Kind:
    """``kind``, or ``default`` when the field is absent or null."""
    return replace(kind, required=False, default=default)


METRIC_TYPES = {"step": integer, "time": optional(number)}
EVAL_TYPES = {"step": integer, "benchmark": label, "level": label, "metric": label, "k": integer,
              "value": number, "stderr": optional(number), "n": optional(number)}
SAMPLE_TYPES = {"step": integer, "prompt_id": label, "correct": boolean,
                "source": optional(label), "level": optional(label), "reward": optional(number)}
PROBE_TYPES = {"probe": label, "estimator": label, "setting": optional(label, ""), "metric": label,
               "value": number, "stderr": optional(number)}


def checked(rows: Iterable[tuple[int, dict]], types: Mapping[str, Kind], path: Path,
            notes: records.Notes) -> list[dict]:
    """Rows whose fields parse by ``types`` (parsed values in place); each other row is skipped
    with a note naming the file, the line and the field (the first few per file, then a count)."""
    out, bad, kinds = [], 0, list(types.items())
    for lineno, row in rows:
        try:
            for name, kind in kinds:
                row[name] = kind(row.get(name))
        except ValueError as e:
            bad += 1
            if bad <= records.MAX_LINE_NOTES:
                got = "" if row.get(name) is None else f" (got {row.get(name)!r})"
                notes.add(f"{path}: line {lineno}: field {name!r} {e}{got}; row skipped")
            continue
        out.append(row)
    if bad > records.MAX_LINE_NOTES:
        notes.add(f"{path}: {bad - records.MAX_LINE_NOTES} more malformed rows skipped")
    return out


def read_frame(path: Path, types: Mapping[str, Kind], notes: records.Notes,
               columns: Iterable[str] = (), defaults: Mapping[str, Any] | None = None
               ) -> pd.DataFrame:
    """The well-formed rows of one jsonl record file as a frame (at least ``columns``), each row
    completed with ``defaults`` where it lacks a field. When every typed column already has its
    kind (a file as :class:`records.RunWriter` writes it) the frame is taken as built; otherwise
    the rows are checked one by one (:func:`checked`)."""
    numbered, read_notes = records.read_numbered(path)
    notes.items += read_notes.items
    if defaults:
        numbered = [(i, {**defaults, **r}) for i, r in numbered]
    columns = (*columns, *(c for c in types if c not in columns))
    df = frame([r for _, r in numbered], columns)
    if df.empty or all(kind.fits(df[name]) for name, kind in types.items()):
        return df
    return frame(checked(numbered, types, path, notes), columns)


def note_texts(notes: records.Notes, run_dir: Path, root: Path | None) -> list[str]:
    """Notes with paths shown relative to the runs directory."""
    base = str(root if root is not None else Path(run_dir).parent)
    return [n.replace(base + os.sep, "") for n in notes.items]


def read_object(path: Path, notes: records.Notes) -> dict:
    """A JSON object file, or {} with a note when it cannot be read."""
    try:
        return records.read_json(path)
    except records.RecordError as e:
        notes.add(f"{e}; ignored")
        return {}
