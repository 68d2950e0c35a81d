"""Compare page: two or more runs side by side, their configs' differences part by part."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import records
from dashboards import charts
from dashboards.state import Context
from records import summary, tables

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


def render(ctx: Context) -> None:
    """Summary side by side, overlaid curves, final accuracy per level, config differences."""
    st.title("Compare")
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
