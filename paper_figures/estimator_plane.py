"""Estimator quality over a run: the bias–variance plane (tr Cov of one update vs cos to the
reference gradient) of every estimator, one panel per checkpoint, from the records of
``python -m probes.variance --run runs/<id>`` (``probes/variance.jsonl``, settings ``step=N``).

    python -m paper_figures.estimator_plane --runs runs/ --out figures/
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

import records
from paper_figures.common import FigureResult, RunIndex, panel_axes, save, script_main
from records import tables

NAME = "estimator_plane"


def points(index: RunIndex) -> pd.DataFrame:
    """Plane points (see `records.tables.plane`) of every run's checkpoints, with ``run``."""
    parts = []
    for rec in index.runs:
        probes, notes = tables.load_probes(rec.path, index.root)
        index.notes.extend(notes)
        probes = probes[probes["probe"] == records.PROBE_VARIANCE] if not probes.empty else probes
        if probes.empty or "s:step" not in probes.columns:
            continue
        parts.append(tables.plane(probes[probes["s:step"].notna()], "cos"))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def make(index: RunIndex, out: Path) -> FigureResult:
    data = points(index)
    result = FigureResult(NAME, data)
    if data.empty:
        result.error = "no run-probe records (python -m probes.variance --run runs/<id>)"
        return result
    panels = sorted({(r, s) for r, s in zip(data["run"], data["s:step"])})
    fig, axes = panel_axes(len(panels), width=4.6, height=3.8)
    for ax, (run, step) in zip(axes, panels):
        sub = data[(data["run"] == run) & (data["s:step"] == step)]
        ax.errorbar(sub["x"], sub["y"], xerr=[sub["x"] - sub["x_lo"], sub["x_hi"] - sub["x"]],
                    yerr=[sub["y"] - sub["y_lo"], sub["y_hi"] - sub["y"]], fmt="o", ms=4, alpha=0.8)
        for _, p in sub.iterrows():
            ax.annotate(p["estimator"], (p["x"], p["y"]), xytext=(4, 3), textcoords="offset points", fontsize=7)
        ax.set_xscale("symlog", linthresh=max(float(sub["x"][sub["x"] > 0].min()) if (sub["x"] > 0).any() else 1.0, 1e-12))
        ax.set_title(f"{run}, step {step:g}")
        ax.set_xlabel("tr Cov of one update")
        ax.set_ylabel("cos to the reference gradient")
        ax.grid(alpha=0.3)
    fig.suptitle("Bias–variance plane over training")
    fig.tight_layout()
    result.files = save(fig, out, NAME)
    return result


if __name__ == "__main__":
    script_main(make, __doc__)
