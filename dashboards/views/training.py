"""Training page: how each run learned (the paper's Figs. 5–8), several runs overlaid."""
from __future__ import annotations

import streamlit as st

import records
from dashboards import charts
from dashboards.state import Context
from records import tables

PANELS = (
    ("Reward", (records.ROLLOUT_REWARD,)),
    ("Rollout accuracy", (records.ROLLOUT_ACCURACY,)),
    ("Entropy", (records.TRAIN_ENTROPY,)),
    ("Response length", (records.ROLLOUT_LENGTH,)),
    ("Gradient norm", (records.GRAD_NORM,)),
    ("Sampler / trainer log-prob gap", (records.ROLLOUT_LOGP_GAP,)),
    ("Offline / SFT data ratio", (records.GATE_OFFLINE_RATIO, records.GATE_SFT_FRACTION)),
)


def held_out_metrics(frames: dict) -> list[str]:
    """``eval/accuracy`` and its per-level columns present in any of the frames."""
    cols = {c for df in frames.values() for c in tables.metric_columns(df, records.EVAL_ACCURACY)}
    return sorted(cols)


def render(ctx: Context) -> None:
    """One chart per metric group, the selected runs overlaid."""
    st.title("Training")
    frames = {r: ctx.runs[r].metrics for r in ctx.selected}
    if not frames:
        st.info("Select runs in the sidebar.")
        return
    window = st.slider("Smoothing (rolling mean, steps)", 1, 50, 1, key="train_smooth")
    held = held_out_metrics(frames)
    if held:
        tidy = tables.tidy_metrics(frames, held)
        st.altair_chart(charts.line_chart(tidy, "Held-out accuracy per level", "accuracy",
                                          facet="metric"), key="chart_heldout")
    for title, names in PANELS:
        tidy = tables.smooth(tables.tidy_metrics(frames, names), window)
        if tidy.empty:
            st.caption(f"{title}: not logged by the selected runs.")
            continue
        dash = "metric" if len(names) > 1 else None
        st.altair_chart(charts.line_chart(tidy, title, title.lower(), dash=dash),
                        key=f"chart_{title}")
    extra = sorted({c for df in frames.values() for c in df.columns} - {"step", "time"}
                   - {n for _, names in PANELS for n in names} - set(held))
    chosen = st.multiselect("Other metrics", extra, key="train_extra")
    for name in chosen:
        tidy = tables.smooth(tables.tidy_metrics(frames, [name]), window)
        st.altair_chart(charts.line_chart(tidy, name, name), key=f"chart_extra_{name}")
