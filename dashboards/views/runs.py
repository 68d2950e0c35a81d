"""Runs page: the table of runs (method, model, LoRA/full, seed, steps, accuracy, wall time)."""
from __future__ import annotations

import streamlit as st

from dashboards.state import Context
from records import summary

COLUMN_CONFIG = {
    "final_accuracy": st.column_config.NumberColumn("final accuracy", format="%.3f"),
    "wall_time_s": st.column_config.NumberColumn("wall time (s)", format="%.1f"),
}


def render(ctx: Context) -> None:
    """Filterable run table; the sidebar selection drives the other pages."""
    st.title("Runs")
    table = summary.runs_table(ctx.runs.values())
    col1, col2, col3 = st.columns(3)
    methods = col1.multiselect("Method", sorted(table["method"].unique()), key="runs_methods")
    models = col2.multiselect("Model", sorted(table["model"].unique()), key="runs_models")
    text = col3.text_input("Run id contains", key="runs_text")
    shown = summary.filter_runs(table, methods, models, text)
    running = int((shown["state"] == "running").sum())
    st.caption(f"{len(shown)} of {len(table)} runs in `{ctx.root}`"
               + (f" · {running} still running (refresh to update)" if running else ""))
    st.dataframe(shown, hide_index=True, column_config=COLUMN_CONFIG)
    st.caption("Choose which runs the other pages show in the sidebar (**Runs shown**).")
