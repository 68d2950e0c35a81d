"""Estimators page: the probe table and bias / variance of each estimator vs G and staleness."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboards import charts
from dashboards.state import Context
from records import tables

VARIANCE_METRICS = ("cos", "trCov", "SNR")
PLANE_Y = ("cos", "rel_bias")  # bias measures the plane can show against tr Cov
BIAS_METRICS = ("rel_bias", "cos", "dir_err", "scale")


def fix_other_settings(rows: pd.DataFrame, swept: str, key: str) -> pd.DataFrame:
    """Hold fixed, at a value the user picks, each setting that varies besides the swept one
    for the same estimator (so every line is one curve)."""
    for col in tables.varying_settings(rows, swept):
        values = sorted(rows[col].dropna().unique(), key=str)
        choice = st.selectbox(f"{col[2:]} (for the {swept} sweep)", values, key=f"{key}_{col}")
        rows = rows[rows[col] == choice]
    return rows


def render(ctx: Context) -> None:
    """Sortable probe table; cos / trCov / SNR vs G; bias vs staleness."""
    st.title("Estimators")
    probes = ctx.probes()
    if probes.empty:
        st.info("No probe records yet. Create them with "
                "`python -m probes.variance --estimators all`.")
        return
    names = sorted(probes["probe"].dropna().unique())
    probe = st.selectbox("Probe", names, key="est_probe")
    rows = probes[probes["probe"] == probe].dropna(axis=1, how="all")
    st.subheader("Probe table")
    st.caption("Click a column header to sort.")
    st.dataframe(tables.probe_table(rows), hide_index=True)
    plane_section(rows)
    stale = tables.staleness_key(rows)
    fresh = rows[rows[f"s:{stale}"].isna()] if stale else rows
    g_rows = tables.sweep(fix_other_settings(fresh, "G", "est_g"), "G", VARIANCE_METRICS)
    if not g_rows.empty:
        st.altair_chart(charts.sweep_chart(g_rows, "cos / trCov / SNR vs group size G", "G"),
                        key="chart_vs_g")
    if stale:
        s_rows = tables.sweep(fix_other_settings(rows[rows[f"s:{stale}"].notna()], stale,
                                               "est_k"), stale, BIAS_METRICS)
        if not s_rows.empty:
            st.altair_chart(charts.sweep_chart(s_rows, f"Bias vs staleness ({stale})",
                                               f"staleness {stale}"), key="chart_vs_stale")


def plane_section(rows: pd.DataFrame) -> None:
    """Bias–variance plane: one labelled point per estimator; a slider over a run's checkpoints
    (``step``); every other setting that varies (G, testbed checkpoint) held at a chosen value."""
    y = st.radio("Bias measure", PLANE_Y, horizontal=True, key="est_plane_y")
    points = tables.plane(rows, y)
    if points.empty:
        return
    st.subheader("Bias–variance plane")
    where = ""
    if "s:step" in points.columns and points["s:step"].notna().any():
        steps = sorted(points["s:step"].dropna().unique())
        step = (st.select_slider("Checkpoint (training step)", steps, value=steps[-1], key="est_plane_step")
                if len(steps) > 1 else steps[0])
        points, where = points[points["s:step"] == step], f" at step {step:g}"
    points, stale_where = fresh_or_stale(points)
    where += stale_where
    for col in tables.plane_settings(points, skip=("s:step",)):
        values = sorted(points[col].dropna().unique(), key=str)
        choice = st.selectbox(f"{col[2:]} (for the plane)", values, key=f"est_plane_{col}")
        points = points[points[col] == choice]
        where += f", {col[2:]}={choice}"
    st.altair_chart(charts.plane_chart(points, f"Bias–variance plane{where}", y), key="chart_plane")


FRESH = "on-policy"


def fresh_or_stale(points: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """A run probe's stale rows (``--stale K``) carry the same estimator names as its on-policy
    rows: the plane shows one of them, chosen here (on-policy first)."""
    stale = tables.staleness_key(points)
    col = f"s:{stale}" if stale else None
    if col is None or not points.groupby(["run", "estimator"])[col].agg(
            lambda s: s.isna().any() and s.notna().any()).any():
        return points, ""
    label = lambda v: v if v == FRESH else f"{v:g}"   # noqa: E731
    choice = st.selectbox(f"{stale} (for the plane)", [FRESH, *sorted(points[col].dropna().unique())],
                          format_func=label, key="est_plane_stale")
    if choice == FRESH:
        return points[points[col].isna()], ""
    return points[points[col] == choice], f", {stale}={label(choice)}"
