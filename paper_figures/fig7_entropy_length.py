"""Fig. 7: token-level entropy (left) and mean response length (right) vs step for GRPO,
LUFFY and HPT."""
from __future__ import annotations

from pathlib import Path

import records
from paper_figures.common import FigureResult, RunIndex, line_figure, script_main
from paper_figures.fig5_val_accuracy import CURVES

NAME = "fig7_entropy_length"
PANELS = (("entropy", records.TRAIN_ENTROPY), ("response length", records.ROLLOUT_LENGTH))


def make(index: RunIndex, out: Path) -> FigureResult:
    return line_figure(NAME, "Entropy and response length vs step", index, out, CURVES, PANELS)


if __name__ == "__main__":
    script_main(make, __doc__)
