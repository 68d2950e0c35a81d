"""Prompts page: per-prompt rollout accuracy over steps (the paper's Figs. 3–4) and which
prompts were solved when."""
from __future__ import annotations

import pandas as pd
import streamlit as st

import records
from dashboards import charts
from dashboards.state import Context
from records import tables

NONE = "(none)"


def solved_when(acc: pd.DataFrame) -> pd.DataFrame:
    """Per prompt: first step with any correct rollout, first step with all correct, last
    accuracy."""
    rows = []
    for (prompt, level), grp in acc.sort_values("step").groupby(["prompt_id", "level"]):
        solved = grp.loc[grp["accuracy"] > 0, "step"]
        mastered = grp.loc[grp["accuracy"] >= 1, "step"]
        rows.append({"prompt_id": prompt, "level": level,
                     "first_solved_step": solved.iloc[0] if len(solved) else None,
                     "first_all_correct_step": mastered.iloc[0] if len(mastered) else None,
                     "last_accuracy": float(grp["accuracy"].iloc[-1])})
    return pd.DataFrame(rows, columns=["prompt_id", "level", "first_solved_step",
                                       "first_all_correct_step", "last_accuracy"])


def render(ctx: Context) -> None:
    """Heatmap of one run, and the difference heatmap of two runs."""
    st.title("Prompts")
    runs = [r for r in ctx.selected if tables.has_record(ctx.paths[r], records.SAMPLES)]
    if not runs:
        st.info("None of the selected runs logged samples (samples.jsonl).")
        return
    col1, col2, col3 = st.columns(3)
    run_a = col1.selectbox("Run", runs, key="prompts_run")
    run_b = col2.selectbox("Minus run (difference)", [NONE] + runs, key="prompts_run_b")
    max_cols = col3.slider("Max step columns", 10, 200, 60, key="prompts_cols")
    acc_a = tables.rollout_accuracy(ctx.samples(run_a))
    if acc_a.empty:
        st.info(f"{run_a}: no readable rollout samples (see the notes above).")
        return
    st.altair_chart(charts.heatmap(tables.bin_steps(acc_a, max_cols),
                                   f"Rollout accuracy per prompt: {run_a}"), key="chart_heat")
    if run_b != NONE:
        acc_b = tables.rollout_accuracy(ctx.samples(run_b))
        diff = tables.accuracy_difference(tables.bin_steps(acc_a, max_cols),
                                        tables.bin_steps(acc_b, max_cols))
        if diff.empty:
            st.caption("The two runs share no (prompt, step) cells.")
        else:
            st.altair_chart(charts.heatmap(diff, f"{run_a} − {run_b} (red: {run_a} better)",
                                           value="difference", diverging=True),
                            key="chart_heat_diff")
    st.subheader("Solved when")
    st.dataframe(solved_when(acc_a), hide_index=True)
