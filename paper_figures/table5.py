"""Table 5 (role of off-policy RL on SFT-gated prompts) as a chart. Of its rows we run only
SFT/ON (= HPT); OFF/ON and Mix/ON are shown from the paper."""
from __future__ import annotations

from pathlib import Path

from paper_figures.common import FigureResult, Requirement, RunIndex, script_main
from paper_figures.paper_numbers import TABLE5
from paper_figures.tables import OurRow, table_figure

NAME = "table5"
OURS = (OurRow("SFT/ON (= HPT)", Requirement("hpt", gate_gamma=0)),)


def make(index: RunIndex, out: Path) -> FigureResult:
    return table_figure(NAME, [TABLE5], OURS, index, out)


if __name__ == "__main__":
    script_main(make, __doc__)
