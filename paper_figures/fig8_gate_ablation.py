"""Fig. 8: gate ablation, training reward (left) and offline data ratio (right) vs step for
HPT with gate γ = 0, 1, 2 (correct rollouts out of 8 at or below which a prompt gets SFT)."""
from __future__ import annotations

from pathlib import Path

import records
from paper_figures.common import FigureResult, Requirement, RunIndex, line_figure, script_main

NAME = "fig8_gate_ablation"
CURVES = tuple((f"Gate({g})", Requirement("hpt", gate_gamma=g)) for g in (0, 1, 2))
PANELS = (("training reward", records.ROLLOUT_REWARD),
          ("offline data ratio", records.GATE_OFFLINE_RATIO))


def make(index: RunIndex, out: Path) -> FigureResult:
    return line_figure(NAME, "Gate ablation", index, out, CURVES, PANELS)


if __name__ == "__main__":
    script_main(make, __doc__)
