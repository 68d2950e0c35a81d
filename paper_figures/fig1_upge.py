"""Fig. 1: the Unified Policy Gradient Estimator, redrawn as four parts around
grad_Uni = 1_stable · (1/π_ref) · Â · ∇π_θ (paper §2, Eq. 6)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.patches import FancyBboxPatch

from paper_figures.common import FigureResult, RunIndex, save, script_main

NAME = "fig1_upge"
FORMULA = (r"$\mathrm{grad}_{Uni} = \mathbb{1}_{stable}\;\frac{1}{\pi_{ref}}\;\hat{A}\;"
           r"\nabla\pi_\theta$")
PARTS = (  # (panel title, symbol, items, panel centre)
    ("Stabilization Mask", r"$\mathbb{1}_{stable}$",
     ("π_θ, π_ref, Â → Clip → Diff", "none (SFT, REINFORCE, LUFFY, SRFT)",
      "PPO / GRPO clip · DAPO clip-higher", "CISPO CIS mask · GSPO sequence clip"),
     (0.25, 0.75)),
    ("Reference Policy", r"$\frac{1}{\pi_{ref}}$",
     ("Algorithms {SFT, …, PPO} → π_ref", "π_ref ∈ {π_θold, …, π_θ, ≡1}",
      "Data source: Online Rollout / Offline Demo"), (0.75, 0.75)),
    ("Advantage Estimation", r"$\hat{A}$",
     ("τ_1 … τ_M (rollouts), τ* (demo)", "→ Â_1 … Â_{M+1}",
      "≡1 (SFT) · ±1 · r − mean · (r − mean)/std"), (0.25, 0.25)),
    ("Likelihood Gradient", r"$\nabla\pi_\theta$",
     ("q → network → τ_t", "π_θ(τ_t | q, τ_<t)", "same for every algorithm"),
     (0.75, 0.25)),
)


def diagram_data() -> pd.DataFrame:
    """The diagram's content: one row per (part, item)."""
    return pd.DataFrame([{"part": title, "symbol": sym, "item": item}
                         for title, sym, items, _ in PARTS for item in items])


def draw(table: pd.DataFrame):
    """Four rounded panels around the central formula."""
    fig, ax = plt.subplots(figsize=(10, 6.5))
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    for title, sym, _, (cx, cy) in PARTS:
        ax.add_patch(FancyBboxPatch((cx - 0.23, cy - 0.2), 0.46, 0.4,
                                    boxstyle="round,pad=0.01", fc="#eef3fb", ec="#3b6ea8"))
        ax.text(cx, cy + 0.15, f"{title}  {sym}", ha="center", fontsize=12, weight="bold")
        items = table.loc[table["part"] == title, "item"]
        for i, item in enumerate(items):
            ax.text(cx, cy + 0.06 - 0.075 * i, item, ha="center", fontsize=9)
    ax.text(0.5, 0.5, FORMULA, ha="center", va="center", fontsize=15,
            bbox=dict(boxstyle="round,pad=0.5", fc="white", ec="black"))
    fig.suptitle("Unified Policy Gradient Estimator (redrawn from Fig. 1)")
    return fig


def make(index: RunIndex, out: Path) -> FigureResult:
    """Fig. 1 needs no runs."""
    table = diagram_data()
    return FigureResult(NAME, table, files=save(draw(table), out, NAME))


if __name__ == "__main__":
    script_main(make, __doc__)
