"""Tables 2, 3, 5 and 6 as charts: the paper's numbers (from :mod:`paper_numbers`) beside our
runs' final held-out accuracy where we have them. Helpers shared by the table scripts.

Where the runs directory holds comparisons of ``python -m training.compare`` (comparison.json,
:mod:`records.comparison`), a table given them draws one "ours" panel per comparison instead:
mean ± 95% CI over seeds per level and on average, each method labelled with the learning rate
its tuning chose, the panel with the task variant."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paper_figures.common import (FigureResult, Requirement, RunIndex, save,
                                  unique_requirements)
from paper_figures.paper_numbers import PaperTable
from records import comparison

COLUMNS = ["source", "table", "row", "benchmark", "value"]
CI_COLUMNS = [*COLUMNS, "ci", "n"]  # a comparison's rows: 95% CI half-width and seeds
OURS_TITLE = "ours: final held-out avg@k"


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


def comparison_title(name: str, record: dict) -> str:
    """The panel title of one comparison: where it is, its task, what its cells are."""
    cmd = record["command"]
    tuned = f", {cmd['tune']} tuned on validation" if comparison.chosen(record) else ""
    return (f"ours ({name}, task {record['task']}): test avg@k,\nmean ± 95% CI over "
            f"{len(cmd['seeds'])} seeds{tuned}")


def comparison_frame(record: dict, ours: Sequence[OurRow], title: str) -> pd.DataFrame:
    """Our rows from a comparison record: per level and "Avg", mean ± 95% CI over seeds (%),
    each method under its table label (the ``ours`` rows name the presets) with the value its
    tuning chose; the base model (one model, no CI) under the label of the "base" row."""
    labels = {row.req.preset: row.label for row in ours if row.checkpoint != "base"}
    base = next((row.label for row in ours if row.checkpoint == "base"), "Base")
    results = comparison.results_of(record)
    cols = [c for c in comparison.table_columns(results) if c.startswith("L") or c == "Avg"]
    rows = [{"row": base, "benchmark": c, "value": 100 * record["base"]["scores"][c],
             "ci": float("nan"), "n": 1} for c in cols if c in record["base"]["scores"]]
    chosen, flag = comparison.chosen(record), record["command"]["tune"]
    for name, runs in results.items():
        label = labels.get(name, name) + (f" ({flag} {chosen[name]:g})" if name in chosen else "")
        for c in cols:
            m, h, n = comparison.column_stats(runs, c)
            rows.append({"row": label, "benchmark": c, "value": m, "ci": h, "n": n})
    return pd.DataFrame(rows).assign(source="ours", table=title)[CI_COLUMNS]


def ours_panels(index: RunIndex, ours: Sequence[OurRow], comparisons: Mapping[str, dict] | None
                = None) -> tuple[list[pd.DataFrame], list[Requirement]]:
    """The "ours" panels: one per comparison record when there are any ({name: record}),
    else one of the runs matching ``ours`` (and the requirements with no run)."""
    if comparisons:
        return [comparison_frame(rec, ours, comparison_title(name, rec))
                for name, rec in comparisons.items()], []
    mine, missing = ours_frame(index, ours, OURS_TITLE)
    return [mine], missing


def draw_bars(ax, df: pd.DataFrame, title: str, colors: dict[str, str]) -> None:
    """Grouped bars: benchmarks on x, one bar per row (the same row has the same colour in
    every panel), with 95% CI error bars where the rows have them."""
    benches = list(dict.fromkeys(df["benchmark"]))
    labels = list(dict.fromkeys(df["row"]))
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(benches))
    for i, label in enumerate(labels):
        sub = df[df["row"] == label].set_index("benchmark")
        ci = (sub["ci"] if "ci" in sub.columns else pd.Series(dtype=float)).fillna(0.0)
        ax.bar(x + i * width - 0.4 + width / 2, [sub["value"].get(b, np.nan) for b in benches],
               width, yerr=[ci.get(b, 0.0) for b in benches], capsize=2, label=label,
               color=colors[label])
    ax.set_xticks(x, benches, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    ax.grid(axis="y", alpha=0.3)


def row_colors(frames: Sequence[pd.DataFrame]) -> dict[str, str]:
    """One colour per row label across all panels; a label with a note in parentheses ("HPT
    (lr 0.0003)") shares the colour of the label without it ("HPT")."""
    labels = list(dict.fromkeys(label for df in frames for label in df["row"]))
    methods = list(dict.fromkeys(label.split(" (")[0] for label in labels))
    cmap = plt.get_cmap("tab20")
    return {label: cmap(methods.index(label.split(" (")[0]) % 20) for label in labels}


def table_figure(name: str, tables: Sequence[PaperTable], ours: Sequence[OurRow], index: RunIndex,
                 out: Path, comparisons: Mapping[str, dict] | None = None) -> FigureResult:
    """Paper panels (one per paper table) and the "ours" panels (:func:`ours_panels`); PNG + PDF."""
    paper = [paper_frame(t) for t in tables]
    mine, missing = ours_panels(index, ours, comparisons)
    widths = [max(6.0, 0.9 * len(t.columns)) for t in tables]
    widths += [max(3.5, 1.5 * df["benchmark"].nunique()) for df in mine]
    fig, axes = plt.subplots(1, len(widths), figsize=(sum(widths), 6.0),
                             gridspec_kw={"width_ratios": widths})
    colors = row_colors([*paper, *mine])
    for ax, df in zip(axes, paper):
        draw_bars(ax, df, df["table"].iloc[0], colors)
    for ax, df in zip(axes[len(paper):], mine):
        if df.empty:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no runs yet:\n" + "\n".join(r.command for r in missing),
                    ha="center", va="center", fontsize=8, transform=ax.transAxes)
        else:
            draw_bars(ax, df, df["table"].iloc[0], colors)
    fig.tight_layout()
    data = pd.concat([*paper, *mine], ignore_index=True)
    return FigureResult(name, data, files=save(fig, out, name), missing=missing)
