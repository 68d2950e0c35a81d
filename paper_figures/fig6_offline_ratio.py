"""Fig. 6: offline data ratio (demo rows / all trained rows) vs step: HPT for each model
(the paper: Qwen2.5-Math-7B and 1.5B), and LUFFY (1/8 by construction: one demonstration per
group of 8)."""
from __future__ import annotations

from pathlib import Path

import records
from paper_figures.common import FigureResult, Requirement, RunIndex, line_figure, script_main
from records import summary

NAME = "fig6_offline_ratio"
HPT = Requirement("hpt", gate_gamma=0)
PANEL = (("offline data ratio", records.GATE_OFFLINE_RATIO),)


def curve_specs(index: RunIndex) -> list[tuple[str, Requirement]]:
    """One HPT curve per model found (or the plain HPT requirement when none), plus LUFFY."""
    models = sorted({summary.config_get(r.config, "model") for r in index.find(HPT)} - {None})
    hpt = [(f"HPT ({m})", Requirement("hpt", gate_gamma=0, model=m)) for m in models]
    return (hpt or [("HPT", HPT)]) + [("LUFFY", Requirement("luffy"))]


def make(index: RunIndex, out: Path) -> FigureResult:
    return line_figure(NAME, "Offline data ratio vs step", index, out, curve_specs(index),
                       PANEL)


if __name__ == "__main__":
    script_main(make, __doc__)
