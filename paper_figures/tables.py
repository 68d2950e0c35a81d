"""Tables 2, 3, 5 and 6 as charts: the paper's numbers (from :mod:`paper_numbers`) beside our
runs' final held-out accuracy where we have them. Helpers shared by the table scripts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paper_figures.common import (FigureResult, Requirement, RunIndex, save,
                                  unique_requirements)
from paper_figures.paper_numbers import PaperTable

COLUMNS = ["source", "table", "row", "benchmark", "value"]


@dataclass(frozen=True)
class OurRow:
    """Which of our runs stands for a table row: a requirement and the checkpoint ('trained' =
    last evaluation, 'base' = first evaluation, i.e. the model before post-training)."""

    label: str
    req: Requirement
    checkpoint: str = "trained"


def paper_frame(table: PaperTable) -> pd.DataFrame:
    """The paper's numbers in tidy form."""
    rows = [{"source": "paper", "table": f"{table.name}: {table.caption}", "row": row,
             "benchmark": col, "value": v}
            for row, values in table.rows.items() for col, v in zip(table.columns, values)]
    return pd.DataFrame(rows, columns=COLUMNS)


def run_scores(rec, checkpoint: str) -> pd.DataFrame:
    """avg@k (level 'all', in %) per benchmark at a run's first or last evaluated step."""
    ev = rec.eval[(rec.eval["metric"] == "avg@k") & (rec.eval["level"].astype(str) == "all")]
    if ev.empty:
        return pd.DataFrame(columns=["benchmark", "value"])
    step = ev["step"].min() if checkpoint == "base" else ev["step"].max()
    at = ev[ev["step"] == step]
    return pd.DataFrame({"benchmark": at["benchmark"].astype(str), "value": at["value"] * 100})


def ours_frame(index: RunIndex, rows: Sequence[OurRow], title: str
               ) -> tuple[pd.DataFrame, list[Requirement]]:
    """Our numbers for the rows we have runs for (mean over seeds), and the missing ones."""
    parts, missing = [], []
    for row in rows:
        recs = index.find(row.req)
        if not recs:
            missing.append(row.req)
            continue
        scores = pd.concat([run_scores(r, row.checkpoint) for r in recs], ignore_index=True)
        if scores.empty:
            continue
        mean = scores.groupby("benchmark", sort=True)["value"].mean().reset_index()
        parts.append(mean.assign(source="ours", table=title, row=row.label))
    df = pd.concat(parts, ignore_index=True)[COLUMNS] if parts else pd.DataFrame(columns=COLUMNS)
    return df, unique_requirements(missing)


def draw_bars(ax, df: pd.DataFrame, title: str, colors: dict[str, str]) -> None:
    """Grouped bars: benchmarks on x, one bar per row (the same row has the same colour in
    every panel)."""
    benches = list(dict.fromkeys(df["benchmark"]))
    labels = list(dict.fromkeys(df["row"]))
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(benches))
    for i, label in enumerate(labels):
        sub = df[df["row"] == label].set_index("benchmark")["value"]
        ax.bar(x + i * width - 0.4 + width / 2, [sub.get(b, np.nan) for b in benches], width,
               label=label, color=colors[label])
    ax.set_xticks(x, benches, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    ax.grid(axis="y", alpha=0.3)


def row_colors(frames: Sequence[pd.DataFrame]) -> dict[str, str]:
    """One colour per row label across all panels."""
    labels = list(dict.fromkeys(label for df in frames for label in df["row"]))
    cmap = plt.get_cmap("tab20")
    return {label: cmap(i % 20) for i, label in enumerate(labels)}


def table_figure(name: str, tables: Sequence[PaperTable], ours: Sequence[OurRow],
                 index: RunIndex, out: Path) -> FigureResult:
    """Paper panels (one per paper table) and an "ours" panel; PNG + PDF."""
    ours_title = "ours: final held-out avg@k"
    paper = [paper_frame(t) for t in tables]
    mine, missing = ours_frame(index, ours, ours_title)
    widths = [max(6.0, 0.9 * len(t.columns)) for t in tables]
    widths.append(max(3.5, 1.5 * mine["benchmark"].nunique()))
    fig, axes = plt.subplots(1, len(widths), figsize=(sum(widths), 6.0),
                             gridspec_kw={"width_ratios": widths})
    colors = row_colors([*paper, mine])
    for ax, df in zip(axes, paper):
        draw_bars(ax, df, df["table"].iloc[0], colors)
    if mine.empty:
        axes[-1].set_axis_off()
        axes[-1].text(0.5, 0.5, "no runs yet:\n" + "\n".join(r.command for r in missing),
                      ha="center", va="center", fontsize=8, transform=axes[-1].transAxes)
    else:
        draw_bars(axes[-1], mine, ours_title, colors)
    fig.tight_layout()
    data = pd.concat([*paper, mine], ignore_index=True)
    return FigureResult(name, data, files=save(fig, out, name), missing=missing)
