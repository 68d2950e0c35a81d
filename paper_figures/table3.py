"""Table 3 (LLaMA3.1-8B and Qwen2.5-Math-1.5B) as a chart, beside our runs."""
from __future__ import annotations

from pathlib import Path

from paper_figures.common import FigureResult, RunIndex, script_main
from paper_figures.paper_numbers import TABLE3_LLAMA, TABLE3_QWEN_1_5B
from paper_figures.table2 import OURS as TABLE2_ROWS
from paper_figures.tables import table_figure

NAME = "table3"
OURS = tuple(r for r in TABLE2_ROWS if r.label in ("Base", "SFT", "GRPO", "LUFFY", "HPT"))


def make(index: RunIndex, out: Path) -> FigureResult:
    return table_figure(NAME, [TABLE3_LLAMA, TABLE3_QWEN_1_5B], OURS, index, out)


if __name__ == "__main__":
    script_main(make, __doc__)
