"""Exploration page: pass@k at large k, base vs trained, and the crossing k*."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import records
from dashboards import charts
from dashboards.state import Context
from records import passk, tables


def run_curves(ctx: Context, run: str, level: str) -> pd.DataFrame:
    """Curves of one run from its eval scores, else recomputed from its samples."""
    curves = passk.curves_from_eval(run, ctx.eval(run), level)
    if curves.empty and tables.has_record(ctx.paths[run], records.SAMPLES):
        curves = passk.curves_from_samples(run, ctx.samples(run))
    return curves


def levels_of(ctx: Context) -> list[str]:
    """Levels with pass@k rows in the selected runs' eval scores ('all' first)."""
    levels = set()
    for run in ctx.selected:
        ev = ctx.eval(run)
        if not ev.empty:
            levels |= set(ev.loc[ev["metric"] == "pass@k", "level"].astype(str))
    return sorted(levels, key=lambda s: (s != "all", s)) or ["all"]


def render(ctx: Context) -> None:
    """pass@k curves with CIs on a log₂ k axis, and a table of k* per run and benchmark."""
    st.title("Exploration")
    if not ctx.selected:
        st.info("Select runs in the sidebar.")
        return
    level = st.selectbox("Level", levels_of(ctx), key="explore_level")
    curves = pd.concat([run_curves(ctx, r, level) for r in ctx.selected], ignore_index=True)
    if curves.empty:
        st.info("No pass@k yet: the selected runs have no pass@k eval rows and no samples.")
        return
    st.altair_chart(charts.passk_chart(curves, "pass@k: base (first eval) vs trained (last)"),
                    key="chart_passk")
    st.caption("Bands: 95% CI (±1.96 stderr of the eval rows, or a problem bootstrap when "
               "recomputed from samples). k* = smallest k where the base model catches up.")
    st.subheader("Crossing k*")
    st.dataframe(passk.crossing_k(curves), hide_index=True)
