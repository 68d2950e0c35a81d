"""Training page: how each run learned (the paper's Figs. 5–8), several runs overlaid, with the
live gradient diagnostics (training/diagnostics.py) beside accuracy and entropy."""
from __future__ import annotations

import streamlit as st

import records
from dashboards import charts
from dashboards.state import Context
from records import gradients, tables

PANELS = (
    ("Reward", (records.ROLLOUT_REWARD,)),
    ("Rollout accuracy", (records.ROLLOUT_ACCURACY,)),
    ("Entropy", (records.TRAIN_ENTROPY,)),
    ("Response length", (records.ROLLOUT_LENGTH,)),
    ("Gradient norm", (records.GRAD_NORM,)),
    ("Sampler / trainer log-prob gap", (records.ROLLOUT_LOGP_GAP,)),
    ("Offline / SFT data ratio", (records.GATE_OFFLINE_RATIO, records.GATE_SFT_FRACTION)),
)
BESIDE = ("Rollout accuracy", "Entropy")  # drawn next to the gradient noise charts
NOISE = (("Gradient SNR", gradients.SNR), ("Gradient noise scale", gradients.B_SIMPLE))
SPLIT = (
    ("SFT vs RL: cosine of their update parts", (records.GRAD_COS_SFT_RL,)),
    ("SFT vs RL: norms of their update parts", (records.GRAD_NORM_SFT, records.GRAD_NORM_RL)),
)
PER_LEVEL = (records.GRAD_W_EMPIRICAL, records.GRAD_W_EXACT, records.GRAD_PASS_RATE)


def held_out_metrics(frames: dict) -> list[str]:
    """``eval/accuracy`` and its per-level columns present in any of the frames."""
    cols = {c for df in frames.values() for c in tables.metric_columns(df, records.EVAL_ACCURACY)}
    return sorted(cols)


def panel(frames: dict, title: str, names: tuple, window: int) -> None:
    """One chart of the ``names`` curves (dashed per metric when several), or a caption."""
    tidy = tables.smooth(tables.tidy_metrics(frames, names), window)
    if tidy.empty:
        st.caption(f"{title}: not logged by the selected runs.")
        return
    dash = "metric" if len(names) > 1 else None
    st.altair_chart(charts.line_chart(tidy, title, title.lower(), dash=dash), key=f"chart_{title}")


def noise_panels(frames: dict, window: int) -> None:
    """SNR and B_simple of each step's update (ratios of window-averaged estimates)."""
    curves = gradients.noise_curves(frames, window)
    for title, metric in NOISE:
        tidy = curves[curves["metric"] == metric]
        if tidy.empty:
            st.caption(f"{title}: not logged by the selected runs (--diagnostics-every 0, or one "
                       "micro-batch per step).")
            continue
        st.altair_chart(charts.line_chart(tidy, title, metric), key=f"chart_{title}")


def weight_panel(frames: dict) -> None:
    """Realised prompt weight per difficulty level against the exact w(p, G), over a step range."""
    steps = [int(s) for df in frames.values() if "step" in df.columns for s in df["step"].dropna()]
    if not steps or not any(gradients.weight_levels(df) for df in frames.values()):
        st.caption("Prompt weights w(p): not logged by the selected runs.")
        return
    lo, hi = min(steps), max(steps)
    first, last = st.slider("Steps averaged for w(p)", lo, hi, (lo, hi), key="train_w_steps") \
        if hi > lo else (lo, hi)
    weights = gradients.prompt_weights(frames, first, last)
    st.altair_chart(charts.weight_chart(
        weights, "Prompt weight w(p): realised per level (points) vs exact w(p, G) (dashed)"),
        key="chart_weights")
    st.caption("w is the factor of ∇p_x in the expected update, E ĝ_x = w(p, G)·∇p_x: the mean "
               "advantage of a level's correct rollouts minus that of its wrong ones, against the "
               "estimator's exact value at the level's pass rate (probes-spec §1.3).")


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
    left, right = st.columns(2)
    with left:
        for title, names in PANELS:
            if title in BESIDE:
                panel(frames, title, names, window)
    with right:
        noise_panels(frames, window)
    for title, names in PANELS:
        if title not in BESIDE:
            panel(frames, title, names, window)
    for title, names in SPLIT:
        panel(frames, title, names, window)
    weight_panel(frames)
    shown = {n for _, names in PANELS + SPLIT for n in names} | set(held)
    extra = sorted({c for df in frames.values() for c in df.columns} - {"step", "time"} - shown
                   - {c for df in frames.values() for c in df.columns if c.startswith(PER_LEVEL)})
    chosen = st.multiselect("Other metrics", extra, key="train_extra")
    for name in chosen:
        tidy = tables.smooth(tables.tidy_metrics(frames, [name]), window)
        st.altair_chart(charts.line_chart(tidy, name, name), key=f"chart_extra_{name}")
