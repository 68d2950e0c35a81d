"""Compare page: the comparisons of ``python -m training.compare`` (its comparison.json records:
the Table-2-shaped table, the tuned learning rates, the paired differences, pass@k curves), then
two or more runs side by side, their configs' differences part by part."""
from __future__ import annotations

import os

import pandas as pd
import streamlit as st

import records
from dashboards import charts
from dashboards.state import Context
from records import comparison, summary, tables

CURVES = (records.ROLLOUT_REWARD, records.EVAL_ACCURACY)


def final_levels(ctx: Context, runs: list[str]) -> pd.DataFrame:
    """Last logged held-out accuracy per level for each run (tidy: run, level, accuracy)."""
    rows = []
    for run in runs:
        df = ctx.runs[run].metrics
        for col in tables.metric_columns(df, records.EVAL_ACCURACY + "/"):
            rows.append({"run": run, "level": col.rsplit("/", 1)[1],
                         "accuracy": summary.last_value(df, col)})
    return pd.DataFrame(rows, columns=["run", "level", "accuracy"])


def passk_frame(record: dict) -> pd.DataFrame:
    """The base model's pass@k and each preset's mean over seeds with its 95% CI band, in the
    form `charts.passk_chart` draws (run, checkpoint, step, k, value, lo, hi, benchmark)."""
    step = max((r["step"] for runs in record["presets"].values() for r in runs), default=0)
    rows = [{"run": "base model", "checkpoint": "base", "step": 0, "k": k, "value": v, "lo": v,
             "hi": v} for k, v in record["base"]["passk"].items()]
    for name, curve in comparison.mean_passk(record).items():
        rows += [{"run": name, "checkpoint": "trained", "step": step, "k": k, "value": m,
                  "lo": m - (0 if pd.isna(h) else h), "hi": m + (0 if pd.isna(h) else h)}
                 for k, (m, h) in curve.items()]
    return pd.DataFrame(rows, columns=["run", "checkpoint", "step", "k", "value", "lo", "hi"]
                        ).assign(benchmark=record["task"])


def tuning_frame(record: dict) -> pd.DataFrame:
    """One row per preset: the value ``--tune`` chose and the validation avg@k (%) of each grid
    value it tried."""
    tuning = record["tuning"]
    flag = tuning.get("tuned", "lr")
    rows = []
    for name in record["presets"]:
        value = tuning["chosen"].get(name)
        row = {"preset": name, f"chosen {flag}": "" if value is None else f"{value:g}"}
        for value, score in tuning.get("scores", {}).get(name, {}).items():
            row[f"validation avg@k (%), {flag}={value}"] = round(100 * score, 1)
        rows.append(row)
    return pd.DataFrame(rows)


def describe(record: dict) -> str:
    """One line: what was compared, on which task, with which arguments."""
    cmd = record["command"]
    tuned = (f"`--tune {cmd['tune']}` over {cmd.get('grid')} on the validation split "
             f"(seeds {cmd.get('tune_seeds')})" if cmd["tune"] != "none" else "no tuning")
    args = " ".join(map(str, cmd["run_args"])) or "none"
    return (f"Task **{record['task']}**; seeds {cmd['seeds']}; {tuned}; run arguments: `{args}`. "
            f"Cells: held-out test-split score (%), mean ± 95% t-CI over seeds.")


def comparisons(ctx: Context) -> None:
    """The comparison records under the runs directory, one chosen at a time."""
    found = comparison.find(ctx.root)
    if not found:
        return
    st.header("Comparisons (training.compare)")
    names = {(p.parent.relative_to(ctx.root).as_posix() if p.parent != ctx.root else "."): p
             for p in found}
    name = st.selectbox("Comparison", list(names), key="cmp_record")
    try:
        record = comparison.read(names[name])
    except records.RecordError as e:
        ctx.notes.append(str(e).replace(str(ctx.root) + os.sep, "") + "; not shown")
        st.info(f"`{name}/{records.COMPARISON}` cannot be read (see the note above).")
        return
    st.caption(describe(record))
    results = comparison.results_of(record)
    header, rows = comparison.table_rows(results, record["base"]["scores"])
    st.dataframe(pd.DataFrame(rows, columns=header), hide_index=True)
    st.caption("k*: the smallest k at which the base model's pass@k catches up (median over "
               "seeds; 'never': seeds whose pass@k stays above the base's).")
    if comparison.chosen(record):
        st.markdown("**Tuned on the validation split**")
        st.dataframe(tuning_frame(record), hide_index=True)
    reference = record["command"]["reference"]
    if any(record["paired"].values()):
        header, rows = comparison.paired_rows(record["paired"], reference, list(record["presets"]))
        st.markdown(f"**Paired differences: {reference} minus each method, seed by seed (points)**")
        st.dataframe(pd.DataFrame(rows, columns=header), hide_index=True)
    curves = passk_frame(record)
    if not curves.empty:
        st.altair_chart(charts.passk_chart(curves, "pass@k: base vs each method's mean over seeds"),
                        key="cmp_record_passk")
    if ctx.runs:
        st.header("Runs side by side")


def render(ctx: Context) -> None:
    """Comparison records; then runs' summary side by side, overlaid curves, final accuracy
    per level, config differences."""
    st.title("Compare")
    comparisons(ctx)
    if not ctx.runs:  # only comparison records under the runs directory
        return
    options = list(ctx.runs)
    runs = st.multiselect("Runs to compare", options, default=ctx.selected[:2], key="cmp_runs")
    if len(runs) < 2:
        st.info("Pick two or more runs.")
        return
    side_by_side = summary.runs_table(ctx.runs[r] for r in runs).set_index("run").T.astype(str)
    st.dataframe(side_by_side)
    frames = {r: ctx.runs[r].metrics for r in runs}
    for name in CURVES:
        tidy = tables.tidy_metrics(frames, [name])
        if not tidy.empty:
            st.altair_chart(charts.line_chart(tidy, name, name), key=f"cmp_{name}")
    levels = final_levels(ctx, runs)
    if not levels.empty:
        st.altair_chart(charts.bar_chart(levels, "level", "accuracy", "run",
                                         "Final held-out accuracy per level"), key="cmp_levels")
    st.header("Config differences")
    only = st.checkbox("Only keys that differ", value=True, key="cmp_only_diff")
    diff = tables.config_diff({r: ctx.runs[r].config for r in runs}, only_differences=only)
    if diff.empty:
        st.caption("The configs are identical.")
    for part, rows in diff.groupby("part", sort=True):
        st.subheader(part)
        st.dataframe(rows.drop(columns="part"), hide_index=True)
