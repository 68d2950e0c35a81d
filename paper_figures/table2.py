"""Table 2 (Qwen2.5-Math-7B, all methods) as a chart, beside our runs of the same methods: the
comparisons of ``python -m training.compare`` found under the runs directory (mean ± 95% CI over
seeds, tuned learning rates, task variant; one panel each), else the matching single runs."""
from __future__ import annotations

from pathlib import Path

from paper_figures.common import FigureResult, Requirement, RunIndex, script_main
from paper_figures.paper_numbers import TABLE2
from paper_figures.tables import OurRow, table_figure

NAME = "table2"
OURS = (OurRow("Base", Requirement("hpt"), "base"), OurRow("SFT", Requirement("sft")),
        OurRow("GRPO", Requirement("grpo")), OurRow("SFT → GRPO", Requirement("sft_then_grpo")),
        OurRow("LUFFY", Requirement("luffy")), OurRow("SRFT", Requirement("srft")),
        OurRow("HPT", Requirement("hpt", gate_gamma=0)))


def make(index: RunIndex, out: Path) -> FigureResult:
    return table_figure(NAME, [TABLE2], OURS, index, out, index.comparisons())


if __name__ == "__main__":
    script_main(make, __doc__)
