"""Fig. 5: held-out (validation) accuracy vs training step for GRPO, LUFFY and HPT, one panel
per benchmark level (paper: AIME24, AMC, MATH-500 on Qwen2.5-Math-1.5B)."""
from __future__ import annotations

from pathlib import Path

import records
from paper_figures.common import FigureResult, Requirement, RunIndex, line_figure, script_main
from records import tables

NAME = "fig5_val_accuracy"
CURVES = (("GRPO", Requirement("grpo")), ("LUFFY", Requirement("luffy")),
          ("HPT", Requirement("hpt", gate_gamma=0)))


def level_panels(index: RunIndex) -> list[tuple[str, str]]:
    """(panel title, metric column) for each held-out level any run logged."""
    cols = sorted({c for r in index.runs
                   for c in tables.metric_columns(r.metrics, records.EVAL_ACCURACY + "/")})
    return [(c.rsplit("/", 1)[1], c) for c in cols] or [("all", records.EVAL_ACCURACY)]


def make(index: RunIndex, out: Path) -> FigureResult:
    return line_figure(NAME, "Validation accuracy vs step", index, out, CURVES,
                       level_panels(index))


if __name__ == "__main__":
    script_main(make, __doc__)
