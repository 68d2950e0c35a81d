"""Table 6 (gate γ ablation) as a chart, beside our HPT runs with γ = 2, 1, 0 of 8."""
from __future__ import annotations

from pathlib import Path

from paper_figures.common import FigureResult, Requirement, RunIndex, script_main
from paper_figures.paper_numbers import TABLE6
from paper_figures.tables import OurRow, table_figure

NAME = "table6"
OURS = tuple(OurRow(label, Requirement("hpt", gate_gamma=g))
             for label, g in (("γ = 2/8", 2), ("γ = 1/8", 1), ("γ = 0", 0)))


def make(index: RunIndex, out: Path) -> FigureResult:
    return table_figure(NAME, [TABLE6], OURS, index, out)


if __name__ == "__main__":
    script_main(make, __doc__)
