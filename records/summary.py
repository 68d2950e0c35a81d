"""One row per run: method, model, fine-tuning kind, seed, final accuracy, wall time.

Read from a run's :class:`records.tables.RunRecords`; pandas only (the run tables of the
dashboard and the run index of the paper figures).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

import records
from records.tables import RunRecords


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
