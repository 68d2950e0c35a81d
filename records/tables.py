"""Run records -> pandas frames: what the dashboard and the paper figures read.

Everything here reads through :mod:`records` (the one owner of the on-disk format) and returns
plain pandas objects; no Streamlit, no torch. Readers are tolerant: a missing file gives an
empty frame, a missing optional key a NaN column; a corrupt line, a row whose field has the
wrong type (checked against the field tables of :mod:`records.checks`), a file that cannot be
read (a directory, a dangling symlink, binary data) is skipped with a note that says what and
why (see :class:`records.Notes`), never an exception. One row per run (the run table) is :mod:`records.summary`; pass@k curves
are :mod:`records.passk`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

import records
from records import foreign
from records.checks import (EVAL_TYPES, METRIC_TYPES, PROBE_TYPES, SAMPLE_TYPES, frame,
                            note_texts, read_frame, read_object)

ENV_RUNS_DIR = "UPGE_RUNS_DIR"
DEFAULT_RUNS_DIR = "runs"

EVAL_COLUMNS = tuple(records.EVAL_FIELDS)
SAMPLE_COLUMNS = tuple(records.SAMPLE_FIELDS) + ("level",)
PROBE_COLUMNS = tuple(records.PROBE_FIELDS)


# ----------------------------------------------------------------------------- where runs live


def resolve_runs_dir(argv: Sequence[str], environ: Mapping[str, str]) -> Path:
    """The runs directory: ``--runs DIR`` (or ``--runs=DIR``) in argv, else $UPGE_RUNS_DIR,
    else ``./runs``. Other arguments are ignored (Streamlit and pytest pass their own)."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--runs" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--runs="):
            return Path(arg.split("=", 1)[1])
    return Path(environ.get(ENV_RUNS_DIR) or DEFAULT_RUNS_DIR)


def has_record(run_dir: Path, name: str) -> bool:
    """Whether the run has the record file ``name`` (even one that cannot be read: reading it
    then says why)."""
    return os.path.lexists(Path(run_dir) / name)


def is_inside(path: Path, root: Path) -> bool:
    """True when ``path`` (symlinks resolved) lies inside ``root``."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True


def discover_runs(root: Path) -> tuple[list[Path], list[str]]:
    """Run directories under ``root`` that really lie inside it, and notes on the ones skipped
    (a symlink pointing elsewhere is never followed)."""
    runs, notes = [], []
    try:
        found = records.list_runs(root)
    except OSError as e:
        return [], [f"{root}: cannot be listed ({e.strerror or type(e).__name__}); no runs read"]
    for path in found:
        if is_inside(path, root):
            runs.append(path)
        else:
            notes.append(f"{path.name}: points outside the runs directory; skipped")
    return runs, notes


# ------------------------------------------------------------------------------- one run


@dataclass
class RunRecords:
    """The light records of one run: enough for the run table and the training curves.
    Samples and probes are read separately (:func:`load_samples`, :func:`load_probes`), and so
    may eval scores be (:func:`load_eval`; then ``eval`` stays empty)."""

    run_id: str
    path: Path
    config: dict = field(default_factory=dict)
    status: dict = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    eval: pd.DataFrame = field(default_factory=lambda: frame([], EVAL_COLUMNS))
    notes: list[str] = field(default_factory=list)


def metrics_frame(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """Metric rows (or their frame) -> one row per step (the last row of a step wins, as after
    a resume)."""
    df = rows if isinstance(rows, pd.DataFrame) else frame(rows, ("step", "time"))
    if df.empty:
        return df
    df["step"] = pd.to_numeric(df["step"], errors="coerce")
    df = df.dropna(subset=["step"]).drop_duplicates("step", keep="last")
    return df.sort_values("step", kind="stable").reset_index(drop=True)


def load_run(run_dir: Path, root: Path | None = None, with_eval: bool = True) -> RunRecords:
    """Config, status, metrics and (unless ``with_eval`` is False) eval scores of one run.
    Without eval, eval/scores.jsonl is still read when the metrics lack ``eval/accuracy``
    (the run table needs a final accuracy)."""
    run_dir = Path(run_dir)
    notes = records.Notes()
    rec = RunRecords(run_id=run_dir.name, path=run_dir)
    rec.config = read_object(run_dir / records.CONFIG, notes)
    rec.status = read_object(run_dir / records.STATUS, notes)
    rec.metrics = metrics_frame(read_frame(run_dir / records.METRICS, METRIC_TYPES, notes))
    if rec.metrics.empty and foreign.kind(run_dir):  # a TRL or verl run beside ours
        rows, foreign_notes, _ = foreign.read_metrics(run_dir)
        rec.metrics = metrics_frame(rows)
        rec.config = rec.config or foreign.config_of(run_dir)
        notes.items += foreign_notes.items
    rec.notes += note_texts(notes, run_dir, root)
    if with_eval or records.EVAL_ACCURACY not in rec.metrics.columns:
        rec.eval, eval_notes = load_eval(run_dir, root)
        rec.notes += eval_notes
    return rec


def load_eval(run_dir: Path, root: Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """eval/scores.jsonl of one run as a frame (tidy rows, see records.EVAL_FIELDS)."""
    notes = records.Notes()
    df = read_frame(Path(run_dir) / records.EVAL_SCORES, EVAL_TYPES, notes, EVAL_COLUMNS)
    return df, note_texts(notes, Path(run_dir), root)


def load_samples(run_dir: Path, root: Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """samples.jsonl of one run as a frame (with a ``level`` column, NaN when absent)."""
    notes = records.Notes()
    df = read_frame(Path(run_dir) / records.SAMPLES, SAMPLE_TYPES, notes, SAMPLE_COLUMNS)
    return df, note_texts(notes, Path(run_dir), root)


def load_probes(run_dir: Path, root: Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """All probe rows of one run as a frame, with parsed setting columns and a ``run`` column."""
    notes = records.Notes()
    parts = [read_frame(path, PROBE_TYPES, notes, PROBE_COLUMNS, {"probe": path.stem})
             for path in records.probe_files(run_dir)]
    df = pd.concat(parts, ignore_index=True) if parts else frame([], PROBE_COLUMNS)
    df["run"] = Path(run_dir).name
    return with_setting_columns(df), note_texts(notes, Path(run_dir), root)


# ------------------------------------------------------------------------------- configs


def flatten_config(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {dotted key: value}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_part(dotted: str) -> tuple[str, str]:
    """'estimator.mask' -> ('estimator', 'mask'); top-level scalars belong to part 'run'."""
    head, _, rest = dotted.partition(".")
    return (head, rest) if rest else ("run", head)


def config_diff(configs: Mapping[str, Mapping], only_differences: bool = True) -> pd.DataFrame:
    """Configs side by side: one row per (part, key), one column per run. With
    ``only_differences`` only keys whose values differ (or are missing somewhere) remain."""
    flat = {run: flatten_config(cfg) for run, cfg in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    rows = []
    for key in keys:
        values = {run: _show(f.get(key, "—")) for run, f in flat.items()}
        if only_differences and len(set(values.values())) <= 1:
            continue
        part, name = config_part(key)
        rows.append({"part": part, "key": name, **values})
    return pd.DataFrame(rows, columns=["part", "key", *configs.keys()])


def _show(value: Any) -> str:
    """Config value as a short string (lists and dicts as JSON-like text)."""
    return value if isinstance(value, str) else repr(value)


# ----------------------------------------------------------------------------- metrics


def metric_columns(metrics: pd.DataFrame, prefix: str) -> list[str]:
    """Metric columns starting with ``prefix`` (sorted)."""
    return sorted(c for c in metrics.columns if c.startswith(prefix))


def tidy_metrics(frames: Mapping[str, pd.DataFrame], names: Sequence[str]) -> pd.DataFrame:
    """Long format (run, step, metric, value) of the chosen metrics; NaNs dropped."""
    parts = []
    for run, df in frames.items():
        cols = [n for n in names if n in df.columns]
        if df.empty or not cols:
            continue
        long = df[["step", *cols]].melt(id_vars="step", var_name="metric", value_name="value")
        long["value"] = pd.to_numeric(long["value"], errors="coerce")
        long.insert(0, "run", run)
        parts.append(long.dropna(subset=["value"]))
    if not parts:
        return pd.DataFrame(columns=["run", "step", "metric", "value"])
    return pd.concat(parts, ignore_index=True)


def smooth(tidy: pd.DataFrame, window: int) -> pd.DataFrame:
    """Rolling mean over ``window`` steps within each (run, metric) curve (1 = unchanged)."""
    if window <= 1 or tidy.empty:
        return tidy
    out = tidy.sort_values(["run", "metric", "step"]).copy()
    out["value"] = out.groupby(["run", "metric"])["value"].transform(
        lambda s: s.rolling(window, min_periods=1).mean())
    return out


# ----------------------------------------------------------------------------- prompts


def rollout_accuracy(samples: pd.DataFrame) -> pd.DataFrame:
    """Per-prompt rollout accuracy per step (Figs. 3–4): columns prompt_id, level, step,
    accuracy, n. Demonstration rows are not rollouts and are left out."""
    cols = ["prompt_id", "level", "step", "accuracy", "n"]
    if samples.empty:
        return pd.DataFrame(columns=cols)
    roll = samples[samples["source"].fillna("rollout") != "demo"].copy()
    roll["correct"] = roll["correct"].astype(float)
    roll["level"] = roll["level"].fillna("—").astype(str)
    grouped = roll.groupby(["prompt_id", "level", "step"], sort=True)["correct"]
    out = grouped.agg(accuracy="mean", n="size").reset_index()
    return out[cols]


def bin_steps(acc: pd.DataFrame, max_columns: int) -> pd.DataFrame:
    """Merge steps into at most ``max_columns`` equal-width bins (mean accuracy per bin; the bin
    is labelled by its first step) so a heatmap of many steps stays readable."""
    if acc.empty:
        return acc
    steps = sorted(acc["step"].unique())
    width = max(1, math.ceil(len(steps) / max_columns))
    if width == 1:
        return acc
    index = {s: steps[(i // width) * width] for i, s in enumerate(steps)}
    binned = acc.assign(step=acc["step"].map(index))
    return (binned.groupby(["prompt_id", "level", "step"], sort=True)
            .agg(accuracy=("accuracy", "mean"), n=("n", "sum")).reset_index())


def accuracy_difference(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Per (prompt, step) accuracy of run a minus run b, on the cells both runs have."""
    keys = ["prompt_id", "level", "step"]
    merged = a[keys + ["accuracy"]].merge(b[keys + ["accuracy"]], on=keys, suffixes=("_a", "_b"))
    merged["difference"] = merged["accuracy_a"] - merged["accuracy_b"]
    return merged


# ------------------------------------------------------------------------------ probes


def parse_setting(setting: Any) -> dict[str, Any]:
    """'G=8,checkpoint=base' -> {'G': 8, 'checkpoint': 'base'} (numbers parsed)."""
    out: dict[str, Any] = {}
    if not isinstance(setting, str):
        return out
    for part in setting.split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = _number_or_text(value.strip())
    return out


def _number_or_text(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else number


def split_estimator(name: Any) -> tuple[str, dict[str, Any]]:
    """'ppo[eps=0.2,K=4]' -> ('ppo', {'eps': 0.2, 'K': 4}); variant flags without '=' are kept
    as {flag: True}."""
    text = str(name)
    base, sep, rest = text.partition("[")
    if not sep or not rest.endswith("]"):
        return text, {}
    flags: dict[str, Any] = {}
    for part in rest[:-1].split(","):
        key, eq, value = part.partition("=")
        flags[key.strip()] = _number_or_text(value.strip()) if eq else True
    return base, flags


def join_estimator(base: str, flags: Mapping[str, Any]) -> str:
    """Inverse of :func:`split_estimator`."""
    if not flags:
        return base
    inner = ",".join(k if v is True else f"{k}={v}" for k, v in flags.items())
    return f"{base}[{inner}]"


def with_setting_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Add one column per setting key (prefixed ``s:``, e.g. ``s:G``, ``s:K``), from the setting
    string and from the estimator's variant flags (``ppo[eps=0.2,K=4]``)."""
    if df.empty:
        return df
    parsed = pd.DataFrame([{**parse_setting(s), **split_estimator(e)[1]}
                           for s, e in zip(df["setting"], df["estimator"])], index=df.index)
    parsed.columns = [f"s:{c}" for c in parsed.columns]
    return pd.concat([df, parsed], axis=1)


def probe_table(probes: pd.DataFrame) -> pd.DataFrame:
    """Probe rows pivoted to one row per (run, probe, estimator, setting), one column per metric."""
    if probes.empty:
        return pd.DataFrame(columns=["run", "probe", "estimator", "setting"])
    table = probes.pivot_table(index=["run", "probe", "estimator", "setting"], columns="metric",
                               values="value", aggfunc="last", sort=True)
    table.columns.name = None
    return table.reset_index()


STALENESS_KEYS = ("K", "stale", "staleness")


def sweep(probes: pd.DataFrame, key: str, metrics: Sequence[str]) -> pd.DataFrame:
    """Rows varying along setting key ``key`` (e.g. G or K) for the chosen metrics: the key's
    value in column ``x``, the line it belongs to in ``series`` (the estimator without that
    flag, e.g. 'ppo[eps=0.2]' for 'ppo[eps=0.2,K=4]'), and a CI from ``stderr`` (lo/hi)."""
    col = f"s:{key}"
    if probes.empty or col not in probes.columns:
        return pd.DataFrame(columns=["run", "estimator", "series", "setting", "metric", "x",
                                     "value", "lo", "hi"])
    rows = probes[probes["metric"].isin(metrics) & probes[col].notna()].copy()
    rows["x"] = pd.to_numeric(rows[col], errors="coerce")
    rows = rows.dropna(subset=["x", "value"])
    rows["series"] = [_without_flag(e, key) for e in rows["estimator"]]
    se = (pd.to_numeric(rows["stderr"], errors="coerce").fillna(0.0) if "stderr" in rows
          else 0.0)  # a probe that logged no stderr at all: no CI
    rows["lo"], rows["hi"] = rows["value"] - 1.96 * se, rows["value"] + 1.96 * se
    return rows.sort_values(["series", "metric", "x"]).reset_index(drop=True)


def _without_flag(estimator: str, key: str) -> str:
    base, flags = split_estimator(estimator)
    return join_estimator(base, {k: v for k, v in flags.items() if k != key})


def varying_settings(rows: pd.DataFrame, swept: str) -> list[str]:
    """Setting columns other than ``swept`` that take several values for the same estimator,
    metric and swept value (e.g. checkpoint base/mid): the ones a reader must hold fixed."""
    col = f"s:{swept}"
    if rows.empty or col not in rows.columns:
        return []
    keys = ["estimator", "metric", col]
    others = [c for c in rows.columns if c.startswith("s:") and c != col]
    return sorted(c for c in others
                  if rows.groupby(keys, dropna=False)[c].nunique(dropna=True).max() > 1)


def staleness_key(probes: pd.DataFrame) -> str | None:
    """The setting key that measures staleness in these probe rows, if any."""
    for key in STALENESS_KEYS:
        if f"s:{key}" in probes.columns:
            return key
    return None


PLANE_X = "trCov"


def plane(probes: pd.DataFrame, y: str, x: str = PLANE_X) -> pd.DataFrame:
    """The bias–variance plane: one row per (run, estimator, setting) that has both metrics,
    with ``x`` (tr Cov of one update) and ``y`` (a bias measure: cos, rel_bias) and their 95% CIs
    from ``stderr`` (x_lo/x_hi, y_lo/y_hi; no CI where the stderr is NaN, e.g. exact moments),
    and the setting columns (``s:step`` for a run's checkpoints, ``s:G``, ...)."""
    cols = ["run", "estimator", "setting", "x", "x_lo", "x_hi", "y", "y_lo", "y_hi"]
    if probes.empty:
        return pd.DataFrame(columns=cols)
    rows = probes[probes["metric"].isin((x, y))].copy()
    rows["stderr"] = pd.to_numeric(rows.get("stderr"), errors="coerce") if "stderr" in rows else float("nan")
    keys = ["run", "estimator", "setting"]
    value = rows.pivot_table(index=keys, columns="metric", values="value", aggfunc="last")
    se = rows.pivot_table(index=keys, columns="metric", values="stderr", aggfunc="last", dropna=False)
    if x not in value.columns or y not in value.columns:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame({"x": value[x], "y": value[y]}).dropna()
    for axis, metric in (("x", x), ("y", y)):
        s = (se[metric] if metric in se.columns else pd.Series(float("nan"), index=se.index))
        s = s.reindex(out.index).fillna(0.0)
        out[f"{axis}_lo"], out[f"{axis}_hi"] = out[axis] - 1.96 * s, out[axis] + 1.96 * s
    out = out.reset_index()
    settings = rows.drop_duplicates(keys).set_index(keys)
    extra = [c for c in settings.columns if c.startswith("s:")]
    out = out.join(settings[extra], on=keys)
    return out[cols + extra].reset_index(drop=True)


def plane_settings(points: pd.DataFrame, skip: Sequence[str] = ()) -> list[str]:
    """Setting columns that take several values for the same estimator (G, checkpoint, ...):
    the plane must hold each fixed to show one point per estimator."""
    if points.empty:
        return []
    others = [c for c in points.columns if c.startswith("s:") and c not in skip]
    return sorted(c for c in others
                  if points.groupby(["run", "estimator"], dropna=False)[c].nunique(dropna=True).max() > 1)
