"""The comparison record: ``comparison.json``, written by ``python -m training.compare`` into its
runs directory, and the maths of the paper's Table 2 that it holds and that every reader shows.

Table maths (pure): :func:`mean_ci` (mean ± 95 % Student-t half-width over seeds), the scores of
one run directory (:func:`final_scores`, :func:`base_scores`, :func:`passk_curve`), the crossing
k* against the base model (:func:`crossing_k`), the paired differences by seed (:func:`paired`),
and the Table-2-shaped tables as rows (:func:`table_rows`, :func:`paired_rows`) or markdown
(:func:`table`, :func:`paired_table`).

The record: :func:`build` reads the runs of one comparison into it, :func:`write` writes it
atomically, :func:`read` reads one back (checked field by field: bad input is a
:class:`records.RecordError` naming the file and the field), :func:`find` lists the records
under a runs root. Its fields are documented in the ``records`` module docstring.
Standard library only: training, the dashboard and the paper figures all import it.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import records

FORMAT = 1  # bump when a field changes meaning
DEFAULT_TASK = "arith"  # a run whose config records no task ran the built-in arithmetic task
MAX_DEPTH = 4  # how deep below a runs root :func:`find` looks

# two-sided 95% Student-t quantiles by degrees of freedom (1..10), then the normal value
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
       10: 2.228}


def mean_ci(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t confidence interval (NaN with one value)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, T95.get(len(xs) - 1, 1.96) * sd / math.sqrt(len(xs))


# ------------------------------------------------------------------------- one run's scores


def scores_at(rows: list[dict], step: int) -> dict:
    """{column: value} of the evaluation rows of ``step``: per-level avg@k ("L<level>"), the
    overall avg@k ("Avg") and pass@k over all problems at the largest k ("pass@<kmax>")."""
    rows = [r for r in rows if r["step"] == step]
    out = {f"L{r['level']}" if r["level"] != "all" else "Avg": r["value"]
           for r in rows if r["metric"] == "avg@k"}
    passk = {r["k"]: r["value"] for r in rows if r["metric"] == "pass@k" and r["level"] == "all"}
    if passk:
        kmax = max(passk)
        out[f"pass@{kmax}"] = passk[kmax]
    return out


def eval_rows(run_dir: Path, curves: bool = False) -> list[dict]:
    """The run's own evaluation rows, or (``curves``) only its large-k pass@k curves
    (benchmark `records.PASSK_BENCHMARK`, written by ``training.compare --passk K``)."""
    rows, _ = records.read_eval(run_dir)
    return [r for r in rows if (r.get("benchmark") == records.PASSK_BENCHMARK) == curves]


def final_scores(run_dir: Path) -> dict:
    """{column: value} of the run's last evaluation (see :func:`scores_at`), with its "step"."""
    rows = eval_rows(run_dir)
    if not rows:
        return {}
    last = max(r["step"] for r in rows)
    return {**scores_at(rows, last), "step": last}


def base_scores(run_dir: Path) -> dict:
    """The step-0 evaluation (the base model before training)."""
    rows = eval_rows(run_dir)
    return scores_at(rows, 0)


def passk_curve(run_dir: Path, step: int | None = None, curves: bool = False) -> dict:
    """{k: pass@k over all problems} of the run's evaluation at ``step`` (default: the last), or
    of its large-k curves (``curves``; {} when it has none)."""
    rows = [r for r in eval_rows(run_dir, curves) if r["metric"] == "pass@k" and r["level"] == "all"]
    if not rows:
        return {}
    step = max(r["step"] for r in rows) if step is None else step
    return {r["k"]: r["value"] for r in rows if r["step"] == step}


def crossing_k(trained: dict, base: dict) -> float:
    """k* = the smallest k at which the base model's pass@k ≥ the trained model's (NaN: never)."""
    ks = sorted(set(trained) & set(base))
    return next((float(k) for k in ks if base[k] >= trained[k]), float("nan"))


# ------------------------------------------------------------------------------ the tables
# ``results`` is {preset: [scores of one run, with its "seed"]}, scores as `final_scores` gives
# them (fractions in [0, 1]) plus "k*".


def paired(results: dict, reference: str, column: str = "Avg") -> dict:
    """{preset: (mean, CI half-width, n)} of ``reference − preset`` on ``column``, seed by seed
    (runs are paired by seed: same data order and sampling seeds), in points."""
    ref = {s["seed"]: s[column] for s in results.get(reference, []) if column in s}
    out = {}
    for name, runs in results.items():
        if name == reference:
            continue
        diffs = [100 * (ref[s["seed"]] - s[column]) for s in runs if s.get("seed") in ref and column in s]
        if diffs:
            out[name] = (*mean_ci(diffs), len(diffs))
    return out


def passk_columns(results: dict) -> list[str]:
    """The "pass@<k>" columns of ``results``, sorted."""
    return sorted({c for runs in results.values() for s in runs for c in s if c.startswith("pass@")})


def paired_all(results: dict, reference: str) -> dict:
    """{column: {preset: {"mean", "ci", "n"}}} of :func:`paired` on "Avg" and each pass@k column
    (points; the form the record stores)."""
    return {c: {name: {"mean": m, "ci": h, "n": n}
                for name, (m, h, n) in paired(results, reference, c).items()}
            for c in ["Avg", *passk_columns(results)]}


def cell(mean: float, half: float, signed: bool = False) -> str:
    """"m ± h" with one decimal ("m" alone when the half-width is unknown)."""
    m = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return m if math.isnan(half) else f"{m} ± {half:.1f}"


def paired_rows(diffs: dict, reference: str, presets: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paired table: ``reference`` minus each other preset (``diffs`` as
    :func:`paired_all` gives it), mean ± 95% CI in points."""
    cols = list(diffs)
    header = [f"{reference} − method (paired by seed)", *cols]
    rows = []
    for name in presets:
        if name == reference:
            continue
        got = [diffs[c].get(name, {"mean": float("nan"), "ci": float("nan")}) for c in cols]
        rows.append([name, *(cell(d["mean"], d["ci"], signed=True) for d in got)])
    return header, rows


def table_columns(results: dict) -> list[str]:
    """Columns of the Table-2-shaped table: levels, "Avg", pass@k, and "k*" when known."""
    cols = sorted({c for runs in results.values() for s in runs for c in s if c.startswith("L")})
    cols += ["Avg", *passk_columns(results)]
    return cols + (["k*"] if any("k*" in s for runs in results.values() for s in runs) else [])


def column_stats(runs: list[dict], column: str) -> tuple[float, float, int]:
    """(mean, 95% CI half-width, n) of one score column over seeds, in points (NaN: no value)."""
    xs = [100 * s[column] for s in runs if column in s and not math.isnan(s[column])]
    return (*mean_ci(xs), len(xs)) if xs else (float("nan"), float("nan"), 0)


def kstar_cell(runs: list[dict]) -> str:
    """The median crossing k* over seeds; seeds whose pass@k never falls to the base's are
    counted, not averaged."""
    xs = sorted(s["k*"] for s in runs if "k*" in s and not math.isnan(s["k*"]))
    never = sum(1 for s in runs if "k*" in s and math.isnan(s["k*"]))
    return (f"{xs[len(xs) // 2]:.0f}" if xs else "—") + (f" ({never} never)" if never else "")


def table_rows(results: dict, base: dict | None = None) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the Table-2-shaped table: one row per preset, cells mean ± 95% CI over
    seeds (points), the base model first when given."""
    cols = table_columns(results)
    rows = []
    if base:
        rows.append(["base model", *("—" if c == "k*" else f"{100 * base.get(c, float('nan')):.1f}"
                                     for c in cols)])
    for name, runs in results.items():
        rows.append([f"{name} (n={len(runs)})", *(
            kstar_cell(runs) if c == "k*" else cell(*column_stats(runs, c)[:2]) for c in cols)])
    return ["method", *cols], rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def table(results: dict, base: dict | None = None) -> str:
    """Markdown table: one row per preset, cells mean ± CI over seeds."""
    return markdown(*table_rows(results, base))


def paired_table(results: dict, reference: str) -> str:
    """Markdown: ``reference`` minus each other preset, per seed, mean ± 95% CI (points)."""
    return markdown(*paired_rows(paired_all(results, reference), reference, list(results)))


# ------------------------------------------------------------------------------ the record


def task_of(run_dir: Path) -> str:
    """The task variant a run trained on (its config's ``task``; :data:`DEFAULT_TASK` when the
    config records none)."""
    cfg = records.read_config(run_dir)
    return str(cfg.get("task") or (cfg.get("config") or {}).get("task") or DEFAULT_TASK)


def build(runs: Mapping[str, Sequence[tuple[int, Path]]], root: Path, command: dict,
          tuning: dict | None = None) -> dict:
    """The comparison record of ``runs`` ({preset: [(seed, run dir)]}, all under ``root``):
    ``command`` holds the arguments of the comparison, ``tuning`` what ``--tune`` chose. The
    base model is read from the first run's step-0 evaluation (every run starts from it). Runs
    with large-k curves (``--passk K``) take pass@K and k* from them, each against its own base
    curve (sampled with the run's seed: paired)."""
    first = next(d for pairs in runs.values() for _, d in pairs)
    large = bool(passk_curve(first, step=0, curves=True))
    base_curve = passk_curve(first, step=0, curves=large)
    presets = {}
    for name, pairs in runs.items():
        entries = []
        for seed, d in pairs:
            scores = final_scores(d)
            step = scores.pop("step", 0)
            curve = passk_curve(d, curves=large)
            own_base = passk_curve(d, step=0, curves=True) if large else base_curve
            if large and curve:
                scores[f"pass@{max(curve)}"] = curve[max(curve)]
            if len(own_base) > 1:
                scores["k*"] = crossing_k(curve, own_base)
            entries.append({"run": Path(d).relative_to(root).as_posix(), "seed": seed,
                            "step": step, "scores": scores, "passk": curve})
        presets[name] = entries
    base = base_scores(first)
    if large and base_curve:  # the base's pass@K beside the runs' (same subset, same seed)
        base[f"pass@{max(base_curve)}"] = base_curve[max(base_curve)]
    rec = {"format": FORMAT, "time": time.time(), "command": command, "task": task_of(first),
           "tuning": tuning or {}, "base": {"scores": base, "passk": base_curve},
           "presets": presets}
    return {**rec, "paired": paired_all(results_of(rec), command["reference"])}


def write(root: Path, record: dict) -> Path:
    """Write ``record`` to ``root/comparison.json`` atomically; returns the path."""
    path = Path(root) / records.COMPARISON
    records.write_json(path, record)
    return path


def results_of(record: dict) -> dict:
    """{preset: [scores of one run with its "seed"]}: what the table functions take."""
    return {name: [{**r["scores"], "seed": r["seed"]} for r in runs]
            for name, runs in record["presets"].items()}


def chosen(record: dict) -> dict:
    """{preset: value ``--tune`` chose} ({} when nothing was tuned)."""
    return dict(record["tuning"].get("chosen", {}))


def mean_passk(record: dict) -> dict:
    """{preset: {k: (mean, 95% CI half-width)}} of the final pass@k over seeds (fractions)."""
    out = {}
    for name, runs in record["presets"].items():
        ks = sorted({k for r in runs for k in r["passk"]})
        out[name] = {k: mean_ci([r["passk"][k] for r in runs if k in r["passk"]]) for k in ks}
    return out


# ---------------------------------------------------------------- reading, checked field by field


def _of_type(types: type | tuple, what: str) -> Callable[[Any], Any]:
    """A field check: the value itself when it is one of ``types`` (never a bool), else
    ValueError "is not <what>"."""
    def parse(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"is not {what}")
        return value
    return parse


_number = _of_type((int, float), "a number")
_integer = _of_type(int, "an integer")
_text = _of_type(str, "a string")
_object = _of_type(dict, "a JSON object")
_list = _of_type(list, "a list")


class _Inner(ValueError):
    """A check failed on one entry of a mapping: its key below the field, and its value."""

    def __init__(self, key: Any, why: str, value: Any):
        super().__init__(why)
        self.key, self.value = key, value


def _integer_key(key: str) -> int:
    if not str(key).isdigit():
        raise ValueError(f"has a key {key!r} that is not an integer k")
    return int(key)


def _mapping(parse_key: Callable[[str], Any]) -> Callable[[Any], dict]:
    """A field check: a JSON object of numbers, its keys parsed by ``parse_key``."""
    def parse(value: Any) -> dict:
        out = {}
        for key, v in _object(value).items():
            k = parse_key(key)  # a bad key is the field's error
            try:
                out[k] = _number(v)
            except ValueError as e:
                raise _Inner(key, str(e), v) from None
        return out
    return parse


_ks = _mapping(_integer_key)  # a pass@k curve {k: value}: JSON's string keys back to integers
_scores = _mapping(str)       # {column: value}


class _Fields:
    """Checks the fields of one parsed record; each error names the file and the field."""

    def __init__(self, path: Path):
        self.path = path

    def check(self, value: Any, parse: Callable[[Any], Any], name: str) -> Any:
        try:
            return parse(value)
        except _Inner as e:
            raise records.RecordError(f"{self.path}: field '{name}.{e.key}' {e} "
                                      f"(got {e.value!r:.60})") from None
        except ValueError as e:
            raise records.RecordError(f"{self.path}: field {name!r} {e} (got {value!r:.60})") from None

    def get(self, obj: dict, key: str, parse: Callable[[Any], Any], where: str = "",
            default: Any = ...) -> Any:
        name = f"{where}.{key}" if where else key
        if key in obj:
            return self.check(obj[key], parse, name)
        if default is ...:
            raise records.RecordError(f"{self.path}: field {name!r} is missing")
        return default


def read(path: Path | str) -> dict:
    """A comparison record, checked: every field :func:`build` writes, of its type (pass@k keys
    back to integers). A missing file, bad JSON or a field missing or of the wrong type raises
    :class:`records.RecordError` naming the file and the field."""
    path = Path(path)
    if not os.path.lexists(path):
        raise records.RecordError(f"{path}: no such file")
    raw = records.read_json(path)
    f = _Fields(path)
    command = f.get(raw, "command", _object)
    for key, parse in (("presets", _list), ("seeds", _list), ("reference", _text),
                       ("tune", _text), ("run_args", _list)):
        f.get(command, key, parse, "command")
    tuning = f.get(raw, "tuning", _object)
    if "chosen" in tuning:
        tuning = {**tuning, "chosen": f.get(tuning, "chosen", _scores, "tuning")}
    if "scores" in tuning:  # {preset: {value: validation score}}
        tuning = {**tuning, "scores": {p: f.check(by, _scores, f"tuning.scores.{p}")
                                       for p, by in f.get(tuning, "scores", _object, "tuning").items()}}
    presets = {}
    for name, runs in f.get(raw, "presets", _object).items():
        presets[name] = []
        for i, run in enumerate(f.check(runs, _list, f"presets.{name}")):
            where = f"presets.{name}[{i}]"
            run = f.check(run, _object, where)
            presets[name].append({"run": f.get(run, "run", _text, where),
                                  "seed": f.get(run, "seed", _integer, where),
                                  "step": f.get(run, "step", _integer, where, default=0),
                                  "scores": f.get(run, "scores", _scores, where),
                                  "passk": f.get(run, "passk", _ks, where)})
    order = [p for p in command["presets"] if p in presets] + [p for p in presets if p not in command["presets"]]
    presets = {p: presets[p] for p in order}  # the command's order (the file's keys are sorted)
    diffs = {}
    for column, by in f.get(raw, "paired", _object).items():
        diffs[column] = {}
        for preset, d in f.check(by, _object, f"paired.{column}").items():
            where = f"paired.{column}.{preset}"
            d = f.check(d, _object, where)
            diffs[column][preset] = {key: f.get(d, key, _number, where) for key in ("mean", "ci", "n")}
    base = f.get(raw, "base", _object)
    return {**raw, "command": command, "task": f.get(raw, "task", _text, default=DEFAULT_TASK),
            "tuning": tuning, "presets": presets, "paired": diffs,
            "base": {"scores": f.get(base, "scores", _scores, "base"),
                     "passk": f.get(base, "passk", _ks, "base")}}


def find(root: Path | str, max_depth: int = MAX_DEPTH) -> list[Path]:
    """The comparison records under a runs root: ``root/comparison.json`` and any one to
    ``max_depth`` directories below, sorted. Run directories (and what they hold) are not
    searched, nor are symlinks followed."""
    root = Path(root)
    found = []
    level = [root] if root.is_dir() else []
    for _ in range(max_depth + 1):
        below = []
        for d in level:
            if (d / records.COMPARISON).is_file():
                found.append(d / records.COMPARISON)
            try:
                subdirs = [p for p in d.iterdir() if p.is_dir() and not p.is_symlink()]
            except OSError:
                continue
            below += [p for p in subdirs if not any(
                os.path.lexists(p / name) for name in (records.CONFIG, records.METRICS))]
        level = below
    return sorted(found)
