"""Fig. 2: pass@k vs k (log₂ axis) of the base model and each trained method, with CIs.

Our analog: each run's eval pass@k rows at its last step ("trained") and the first step of an
HPT run ("Base", the model before post-training), one panel per benchmark and level.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from paper_figures.common import (FigureResult, Requirement, RunIndex, draw_line_panels,
                                  save, script_main)
from records import passk

NAME = "fig2_passk"
METHODS = (("HPT", Requirement("hpt", gate_gamma=0)), ("LUFFY", Requirement("luffy")),
           ("GRPO", Requirement("grpo")), ("SFT", Requirement("sft")),
           ("SFT→GRPO", Requirement("sft_then_grpo")))
COLUMNS = ["panel", "curve", "k", "value", "lo", "hi"]


def run_curves(rec) -> pd.DataFrame:
    """pass@k curves of every level of one run (base and trained checkpoints)."""
    levels = rec.eval.loc[rec.eval["metric"] == "pass@k", "level"].astype(str).unique()
    parts = [passk.curves_from_eval(rec.run_id, rec.eval, lv) for lv in levels]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=passk.CURVE_COLUMNS)


def method_curve(recs, label: str, checkpoint: str) -> pd.DataFrame:
    """Mean over runs (seeds) of one checkpoint's curves, labelled for the figure."""
    parts = [run_curves(r) for r in recs]
    cur = pd.concat(parts, ignore_index=True)
    cur = cur[cur["checkpoint"] == checkpoint]
    if cur.empty:
        return pd.DataFrame(columns=COLUMNS)
    cur = cur.assign(panel=cur["benchmark"] + " / " + cur["level"].astype(str))
    mean = cur.groupby(["panel", "k"], sort=True)[["value", "lo", "hi"]].mean().reset_index()
    return mean.assign(curve=label)[COLUMNS]


def make(index: RunIndex, out: Path) -> FigureResult:
    parts, missing = [], []
    for label, req in METHODS:
        recs = index.find(req)
        if not recs:
            missing.append(req)
            continue
        parts.append(method_curve(recs, label, "trained"))
    base_runs = index.find(METHODS[0][1]) or [r for _, q in METHODS for r in index.find(q)]
    if base_runs:
        parts.append(method_curve(base_runs[:1], "Base", "base"))
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    result = FigureResult(NAME, table, missing=missing)
    if not table.empty:
        ylabels = {p: "pass@k" for p in table["panel"]}
        fig = draw_line_panels(table, "pass@k (Fig. 2 analog)", x="k", ylabels=ylabels,
                               logx=True)
        result.files = save(fig, out, NAME)
    return result


if __name__ == "__main__":
    script_main(make, __doc__)
