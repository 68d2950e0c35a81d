"""Data layer of the dashboard and the paper figures: run records -> pandas frames.

Everything here reads through :mod:`records` (the one owner of the on-disk format) and returns
plain pandas objects. No Streamlit, no torch: ``paper_figures`` imports this module too.
Readers are tolerant: a missing file gives an empty frame, a missing key a NaN column, a
corrupt line a note (see :class:`records.Notes`), never an exception.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

import records

ENV_RUNS_DIR = "UPGE_RUNS_DIR"
DEFAULT_RUNS_DIR = "runs"
FIRST_RUN_COMMAND = "python -m training.run hpt"

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
    for path in records.list_runs(root):
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


def frame(rows: list[dict], columns: Iterable[str] = ()) -> pd.DataFrame:
    """DataFrame of record rows with at least ``columns`` (missing ones become NaN)."""
    df = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    for col in columns:
        if col not in df.columns:
            df[col] = math.nan
    return df


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    """Metric rows -> one row per step (the last row of a step wins, as after a resume)."""
    df = frame(rows, ("step", "time"))
    if df.empty:
        return df
    df["step"] = pd.to_numeric(df["step"], errors="coerce")
    df = df.dropna(subset=["step"]).drop_duplicates("step", keep="last")
    return df.sort_values("step", kind="stable").reset_index(drop=True)


def _note_texts(notes: records.Notes, run_dir: Path, root: Path | None) -> list[str]:
    """Notes with paths shown relative to the runs directory."""
    base = str(root if root is not None else Path(run_dir).parent)
    return [n.replace(base + os.sep, "") for n in notes.items]


def load_run(run_dir: Path, root: Path | None = None, with_eval: bool = True) -> RunRecords:
    """Config, status, metrics and (unless ``with_eval`` is False) eval scores of one run.
    Without eval, eval/scores.jsonl is still read when the metrics lack ``eval/accuracy``
    (the run table needs a final accuracy)."""
    run_dir = Path(run_dir)
    rec = RunRecords(run_id=run_dir.name, path=run_dir, status=records.read_status(run_dir))
    try:
        rec.config = records.read_config(run_dir)
    except records.RecordError as e:
        rec.notes.append(f"{run_dir.name}: config.json is not valid JSON; ignored ({e})")
    metric_rows, notes = records.read_metrics(run_dir)
    rec.metrics = metrics_frame(metric_rows)
    rec.notes += _note_texts(notes, run_dir, root)
    if with_eval or records.EVAL_ACCURACY not in rec.metrics.columns:
        rec.eval, eval_notes = load_eval(run_dir, root)
        rec.notes += eval_notes
    return rec


def load_eval(run_dir: Path, root: Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """eval/scores.jsonl of one run as a frame (tidy rows, see records.EVAL_FIELDS)."""
    rows, notes = records.read_eval(run_dir)
    return frame(rows, EVAL_COLUMNS), _note_texts(notes, Path(run_dir), root)


def load_samples(run_dir: Path, root: Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """samples.jsonl of one run as a frame (with a ``level`` column, NaN when absent)."""
    rows, notes = records.read_samples(run_dir)
    return frame(rows, SAMPLE_COLUMNS), _note_texts(notes, Path(run_dir), root)


def load_probes(run_dir: Path, root: Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """All probe rows of one run as a frame, with parsed setting columns and a ``run`` column."""
    rows, notes = records.read_probes(run_dir)
    df = frame(rows, PROBE_COLUMNS)
    df["run"] = Path(run_dir).name
    return with_setting_columns(df), _note_texts(notes, Path(run_dir), root)


# --------------------------------------------------------------------------- run summaries


def config_get(config: Mapping, *keys: str, default: Any = None) -> Any:
    """First present key among ``keys`` (dotted keys reach into nested dicts)."""
    for key in keys:
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return node
    return default


def method_of(config: Mapping) -> str:
    """The run's method (its preset name; 'probe <name>' for a probe run)."""
    method = config_get(config, "preset", "method", "estimator.name")
    if method is None and config_get(config, "probe") is not None:
        return f"probe {config_get(config, 'probe')}"
    return str(method if method is not None else "?")


def finetune_kind(config: Mapping) -> str:
    """'LoRA r=<r>' or 'full' (or '' when the config does not say)."""
    r = config_get(config, "lora_r", "lora.r")
    if r is None:
        return ""
    try:
        return f"LoRA r={int(r)}" if int(r) > 0 else "full"
    except (TypeError, ValueError):
        return str(r)


def last_value(df: pd.DataFrame, column: str) -> float:
    """Last finite value of a metrics column (NaN when none)."""
    if column not in df.columns:
        return math.nan
    series = pd.to_numeric(df[column], errors="coerce").dropna()
    return float(series.iloc[-1]) if len(series) else math.nan


def final_accuracy(rec: RunRecords) -> float:
    """Held-out accuracy at the last evaluation: ``eval/accuracy`` of the metrics, else the mean
    avg@k over benchmarks (level 'all') of the last step in eval/scores.jsonl."""
    value = last_value(rec.metrics, records.EVAL_ACCURACY)
    if not math.isnan(value) or rec.eval.empty:
        return value
    ev = rec.eval[(rec.eval["metric"] == "avg@k") & (rec.eval["level"] == "all")]
    if ev.empty:
        return math.nan
    return float(ev[ev["step"] == ev["step"].max()]["value"].mean())


def wall_time(metrics: pd.DataFrame) -> float:
    """Seconds of training: the sum of ``time/step_seconds`` when logged, else the span of the
    rows' timestamps."""
    if records.STEP_SECONDS in metrics.columns:
        total = pd.to_numeric(metrics[records.STEP_SECONDS], errors="coerce").sum()
        if total > 0:
            return float(total)
    if "time" not in metrics.columns or metrics.empty:
        return math.nan
    times = pd.to_numeric(metrics["time"], errors="coerce").dropna()
    return float(times.max() - times.min()) if len(times) else math.nan


def last_step(rec: RunRecords) -> int | None:
    """Highest logged step (falls back to status.json's step)."""
    if not rec.metrics.empty:
        return int(rec.metrics["step"].max())
    step = rec.status.get("step")
    return int(step) if isinstance(step, (int, float)) else None


def run_summary(rec: RunRecords) -> dict:
    """One row of the run table."""
    cfg = rec.config
    return {
        "run": rec.run_id,
        "method": method_of(cfg),
        "model": str(config_get(cfg, "model", "model.name", default="")),
        "finetune": finetune_kind(cfg),
        "seed": config_get(cfg, "seed"),
        "gate_gamma": config_get(cfg, "gate_gamma"),
        "steps": last_step(rec),
        "max_steps": config_get(cfg, "max_steps"),
        "final_accuracy": final_accuracy(rec),
        "wall_time_s": wall_time(rec.metrics),
        # a "running" status whose process is gone or silent reads "stopped" (records.run_state)
        "state": str(records.run_state(rec.status) or ("probe-only" if rec.metrics.empty else "unknown")),
    }


INTEGER_COLUMNS = ("seed", "gate_gamma", "steps", "max_steps")


def runs_table(recs: Iterable[RunRecords]) -> pd.DataFrame:
    """The run table (one row per run)."""
    rows = [run_summary(r) for r in recs]
    table = pd.DataFrame(rows, columns=list(run_summary(RunRecords("", Path("."))).keys()))
    for col in INTEGER_COLUMNS:
        table[col] = pd.to_numeric(table[col], errors="coerce").round().astype("Int64")
    return table


def filter_runs(table: pd.DataFrame, methods: Sequence[str] = (), models: Sequence[str] = (),
                text: str = "") -> pd.DataFrame:
    """Rows whose method and model are among the chosen ones (empty = all) and whose run id
    contains ``text``."""
    keep = pd.Series(True, index=table.index)
    if methods:
        keep &= table["method"].isin(methods)
    if models:
        keep &= table["model"].isin(models)
    if text:
        keep &= table["run"].str.contains(text, case=False, regex=False)
    return table[keep]


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
    se = pd.to_numeric(rows["stderr"], errors="coerce").fillna(0.0)
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
