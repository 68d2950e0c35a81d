"""Fig. 4: difference heatmap of per-question rollout accuracy, HPT − SFT→GRPO (red: HPT
better, blue: SFT→GRPO better), one panel per difficulty level."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from paper_figures.common import (FigureResult, Requirement, RunIndex, draw_heatmaps, save,
                                  script_main)
from paper_figures.fig3_heatmap import RUN as BASELINE
from paper_figures.fig3_heatmap import accuracy_cells
from records import tables

NAME = "fig4_heatmap_diff"
HPT = Requirement("hpt", gate_gamma=0)


def make(index: RunIndex, out: Path) -> FigureResult:
    hpt, base = accuracy_cells(index, HPT), accuracy_cells(index, BASELINE)
    missing = [req for req, cells in ((HPT, hpt), (BASELINE, base)) if cells is None]
    if missing or hpt.empty or base.empty:
        return FigureResult(NAME, pd.DataFrame(), missing=missing)
    diff = tables.accuracy_difference(hpt, base)
    fig = draw_heatmaps(diff, "difference", "HPT − SFT→GRPO rollout accuracy", diverging=True)
    return FigureResult(NAME, diff, files=save(fig, out, NAME))


if __name__ == "__main__":
    script_main(make, __doc__)
