"""Shared pieces of the paper-figure scripts: finding the runs a figure needs, saying which
command makes a missing one, drawing line panels, and saving PNG + PDF.

Records are read through :mod:`records` (its tables and run summaries); no torch.
Every figure function returns a :class:`FigureResult` whose ``data`` is exactly what was
plotted, so tests can compare it with the records.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import records  # noqa: E402
from records import comparison, summary, tables  # noqa: E402

FORMATS = ("png", "pdf")
DPI = 150
TRAIN_COMMAND = "python -m training.run"
MINUTES_PER_RUN = 5  # embedded default on 2 CPU cores (estimate, stated to the user)


@dataclass(frozen=True)
class Requirement:
    """A run a figure needs: the preset (and gate γ / seed when they matter) and the
    command of the training CLI that produces it."""

    preset: str
    gate_gamma: int | None = None
    seed: int | None = None
    model: str | None = None

    def matches(self, config: dict) -> bool:
        """Whether a run's config is a run of this requirement (a missing gate_gamma is 0,
        the default of every preset; None fields match anything)."""
        if summary.method_of(config) != self.preset:
            return False
        if self.gate_gamma is not None and summary.config_get(config, "gate_gamma",
                                                           default=0) != self.gate_gamma:
            return False
        if self.model is not None and summary.config_get(config, "model") != self.model:
            return False
        return self.seed is None or summary.config_get(config, "seed") == self.seed

    def argv(self) -> list[str]:
        """Arguments of ``python -m training.run``."""
        args = [self.preset]
        if self.gate_gamma:
            args += ["--gate-gamma", str(self.gate_gamma)]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        if self.model is not None:
            args += ["--model", self.model]
        return args

    @property
    def command(self) -> str:
        return " ".join([TRAIN_COMMAND, *self.argv()])


@dataclass
class FigureResult:
    """What a figure script made: the plotted data, the files, and the runs it lacked."""

    name: str
    data: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    missing: list[Requirement] = field(default_factory=list)
    error: str = ""


class RunIndex:
    """Every run under a runs directory, loaded once; samples are read on demand."""

    def __init__(self, root: Path):
        self.root = Path(root)
        paths, self.notes = tables.discover_runs(self.root)
        self.runs = [tables.load_run(p, self.root) for p in paths]
        for rec in self.runs:
            self.notes.extend(rec.notes)
        self._samples: dict[str, pd.DataFrame] = {}

    def find(self, req: Requirement) -> list[tables.RunRecords]:
        """Runs matching a requirement (all seeds unless it pins one)."""
        return [r for r in self.runs if r.config and req.matches(r.config)]

    def comparisons(self) -> dict[str, dict]:
        """The comparison records of ``training.compare`` under the runs directory, by their
        directory relative to it ("." for the runs directory itself); one that cannot be read
        is left out with a note naming the file and the field."""
        found = {}
        for path in comparison.find(self.root):
            try:
                record = comparison.read(path)
            except records.RecordError as e:
                self.notes.append(f"{e}; left out")
                continue
            found[path.parent.relative_to(self.root).as_posix()] = record
        return found

    def samples(self, rec: tables.RunRecords) -> pd.DataFrame:
        if rec.run_id not in self._samples:
            df, notes = tables.load_samples(rec.path, self.root)
            self.notes.extend(notes)
            self._samples[rec.run_id] = df
        return self._samples[rec.run_id]


def unique_requirements(reqs) -> list[Requirement]:
    """Requirements with distinct commands, in first-seen order."""
    return list({r.command: r for r in reversed(list(reqs))}.values())[::-1]


# ------------------------------------------------------------------------------ curves


def mean_curve(recs: Sequence[tables.RunRecords], column: str) -> pd.DataFrame:
    """Mean over runs (seeds) of one metric per step: columns step, value, n_runs."""
    parts = [r.metrics[["step", column]].rename(columns={column: "value"})
             for r in recs if column in r.metrics.columns]
    if not parts:
        return pd.DataFrame(columns=["step", "value", "n_runs"])
    long = pd.concat(parts, ignore_index=True)
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.dropna(subset=["value"])
    return (long.groupby("step", sort=True)["value"].agg(value="mean", n_runs="size")
            .reset_index())


def curves(index: RunIndex, curve_specs: Sequence[tuple[str, Requirement]],
           panels: Sequence[tuple[str, str]]) -> tuple[pd.DataFrame, list[Requirement]]:
    """Tidy (panel, curve, step, value, n_runs) for each curve × panel (panel = (title,
    metric column)), averaged over matching runs; and the requirements with no run."""
    parts, missing = [], []
    for label, req in curve_specs:
        recs = index.find(req)
        if not recs:
            missing.append(req)
            continue
        for title, column in panels:
            curve = mean_curve(recs, column)
            parts.append(curve.assign(panel=title, curve=label))
    cols = ["panel", "curve", "step", "value", "n_runs"]
    tidy = pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)
    return tidy, unique_requirements(missing)


# ---------------------------------------------------------------------------- drawing


def panel_axes(n: int, width: float = 4.2, height: float = 3.2):
    """A row of ``n`` subplots."""
    fig, axes = plt.subplots(1, max(1, n), figsize=(width * max(1, n), height), squeeze=False)
    return fig, list(axes[0])


def draw_line_panels(tidy: pd.DataFrame, title: str, x: str = "step",
                     ylabels: dict[str, str] | None = None, logx: bool = False):
    """One subplot per panel, one line per curve (matplotlib figure)."""
    panels = list(dict.fromkeys(tidy["panel"]))
    fig, axes = panel_axes(len(panels))
    for ax, panel in zip(axes, panels):
        sub = tidy[tidy["panel"] == panel]
        for curve, grp in sub.groupby("curve", sort=False):
            grp = grp.sort_values(x)
            ax.plot(grp[x], grp["value"], marker="o" if len(grp) < 30 else None, ms=3,
                    label=str(curve))
            if {"lo", "hi"} <= set(grp.columns):
                ax.fill_between(grp[x], grp["lo"], grp["hi"], alpha=0.15)
        ax.set_title(str(panel))
        ax.set_xlabel(x)
        ax.set_ylabel((ylabels or {}).get(panel, str(panel)))
        if logx:
            ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def draw_heatmaps(cells: pd.DataFrame, value: str, title: str, diverging: bool = False):
    """Per-prompt heatmaps (rows = prompts, columns = steps), one panel per level. Sequential
    colours in [0, 1] for accuracy; diverging red/blue in [−1, 1] for differences."""
    levels = sorted(cells["level"].unique())
    fig, axes = panel_axes(len(levels), width=5.0, height=4.0)
    cmap, lo = ("RdBu_r", -1.0) if diverging else ("viridis", 0.0)
    image = None
    for ax, level in zip(axes, levels):
        grid = cells[cells["level"] == level].pivot_table(
            index="prompt_id", columns="step", values=value, aggfunc="mean", sort=True)
        image = ax.imshow(grid.to_numpy(), aspect="auto", cmap=cmap, vmin=lo, vmax=1.0,
                          interpolation="nearest")
        ax.set_title(str(level))
        ax.set_xlabel("step")
        ax.set_ylabel("problem")
        ticks = range(0, grid.shape[1], max(1, grid.shape[1] // 8))
        ax.set_xticks(list(ticks), [str(grid.columns[i]) for i in ticks])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, label=value)
    fig.suptitle(title)
    return fig


def save(fig, out: Path, name: str) -> list[Path]:
    """Write ``<out>/<name>.png`` and ``.pdf`` (no timestamps in the PDF) and close."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = out / f"{name}.{fmt}"
        meta = {"CreationDate": None} if fmt == "pdf" else {}
        fig.savefig(path, dpi=DPI, metadata=meta)
        paths.append(path)
    plt.close(fig)
    return paths


def line_figure(name: str, title: str, index: RunIndex, out: Path,
                curve_specs: Sequence[tuple[str, Requirement]],
                panels: Sequence[tuple[str, str]]) -> FigureResult:
    """The whole of a "metric vs step" figure (Figs. 5–8): gather, draw, save."""
    tidy, missing = curves(index, curve_specs, panels)
    result = FigureResult(name, tidy, missing=missing)
    if not tidy.empty:
        result.files = save(draw_line_panels(tidy, title), out, name)
    return result


# ------------------------------------------------------------------------------- CLI


def report(result: FigureResult) -> str:
    """What a figure script prints: files written, and commands for runs it lacked."""
    drawn = ", ".join(str(p) for p in result.files)
    lines = [f"{result.name}: " + (drawn or "not drawn") + (f" ({result.error})" if result.error
                                                              else "")]
    for req in result.missing:
        lines.append(f"  missing run -> {req.command}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=Path, default=Path(tables.DEFAULT_RUNS_DIR),
                        help="runs directory (default: ./runs)")
    parser.add_argument("--out", type=Path, default=Path("figures"),
                        help="output directory (default: ./figures)")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        parser.error(f"--runs {args.runs}: no such directory")
    return args


def script_main(make: Callable[[RunIndex, Path], FigureResult], description: str,
                argv: Sequence[str] | None = None) -> FigureResult:
    """``python -m paper_figures.<script> --runs runs/ --out figures/``."""
    args = parse_args(argv, description)
    index = RunIndex(args.runs)
    result = make(index, args.out)
    print(report(result))
    for note in dict.fromkeys(index.notes):
        print(f"note: {note}")
    return result


def percent(value: float) -> float:
    """Fraction in [0, 1] -> percent (NaN stays NaN)."""
    return value * 100 if not math.isnan(value) else value
