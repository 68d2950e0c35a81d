"""Fig. 3: per-question rollout accuracy (0, 1/n, …, 1) over training of the GRPO stage of
SFT→GRPO, one panel per difficulty level (paper: MATH levels 3 and 5, 50 epochs)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from paper_figures.common import (FigureResult, Requirement, RunIndex, draw_heatmaps, save,
                                  script_main)
from records import tables

NAME = "fig3_heatmap"
RUN = Requirement("sft_then_grpo")
MAX_COLUMNS = 50  # the paper's 50 epochs


def accuracy_cells(index: RunIndex, req: Requirement):
    """Binned per-prompt rollout accuracy of the first run matching ``req`` that has readable
    samples (empty when none has; None when no run matches)."""
    recs = index.find(req)
    if not recs:
        return None
    for rec in recs:
        cells = tables.rollout_accuracy(index.samples(rec))
        if not cells.empty:
            break
    return tables.bin_steps(cells, MAX_COLUMNS)


def make(index: RunIndex, out: Path) -> FigureResult:
    cells = accuracy_cells(index, RUN)
    if cells is None or cells.empty:
        return FigureResult(NAME, pd.DataFrame(), missing=[RUN] if cells is None else [])
    fig = draw_heatmaps(cells, "accuracy", "Rollout accuracy per question, SFT→GRPO")
    return FigureResult(NAME, cells, files=save(fig, out, NAME))


if __name__ == "__main__":
    script_main(make, __doc__)
