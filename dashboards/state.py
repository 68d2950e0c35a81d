"""What every page sees: the runs directory, the (cached) records, the selection and the notes.

Records are cached with ``st.cache_data`` keyed by :func:`records.files_signature` of the run
directory, so a file is re-read only after it changed (a run still training shows its new
steps on the next refresh) and never otherwise. The cache lives in memory only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import streamlit as st

import records
from records import tables

MAX_DEFAULT_SELECTED = 8


@st.cache_data(show_spinner=False, max_entries=1024)
def cached_run(path: str, root: str, signature: tuple) -> tables.RunRecords:
    """Light records of one run, eval scores left for :func:`cached_eval` (``signature`` is
    only the cache key)."""
    return tables.load_run(Path(path), Path(root), with_eval=False)


@st.cache_data(show_spinner=False, max_entries=1024)
def cached_eval(path: str, root: str, signature: tuple) -> tuple[pd.DataFrame, list[str]]:
    """eval/scores.jsonl of one run (``signature`` is only the cache key)."""
    return tables.load_eval(Path(path), Path(root))


@st.cache_data(show_spinner=False, max_entries=256)
def cached_samples(path: str, root: str, signature: tuple) -> tuple[pd.DataFrame, list[str]]:
    """samples.jsonl of one run (``signature`` is only the cache key)."""
    return tables.load_samples(Path(path), Path(root))


@st.cache_data(show_spinner=False, max_entries=256)
def cached_probes(path: str, root: str, signature: tuple) -> tuple[pd.DataFrame, list[str]]:
    """Probe rows of one run (``signature`` is only the cache key)."""
    return tables.load_probes(Path(path), Path(root))


@dataclass
class Context:
    """The runs directory, its runs' light records, the sidebar selection and the notes."""

    root: Path
    runs: dict[str, tables.RunRecords]
    paths: dict[str, Path]
    signatures: dict[str, tuple]
    selected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def training_runs(self) -> list[str]:
        """Runs that logged metrics (probe-only run directories are left out)."""
        return [r for r, rec in self.runs.items() if not rec.metrics.empty]

    def eval(self, run: str) -> pd.DataFrame:
        """Eval score rows of one run."""
        df, notes = cached_eval(str(self.paths[run]), str(self.root), self.signatures[run])
        self.notes.extend(notes)
        return df

    def samples(self, run: str) -> pd.DataFrame:
        """Samples of one run (notes on skipped lines are added to the page's notes)."""
        df, notes = cached_samples(str(self.paths[run]), str(self.root), self.signatures[run])
        self.notes.extend(notes)
        return df

    def probes(self) -> pd.DataFrame:
        """Probe rows of every run directory, concatenated."""
        parts = []
        for run, path in self.paths.items():
            if (path / records.PROBES_DIR).is_dir():
                df, notes = cached_probes(str(path), str(self.root), self.signatures[run])
                self.notes.extend(notes)
                parts.append(df)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            columns=[*tables.PROBE_COLUMNS, "run"])


def load_context(root: Path) -> Context:
    """Discover and load every run under ``root`` (through the cache)."""
    paths, notes = tables.discover_runs(root)
    by_id = {p.name: p for p in paths}
    sigs = {run: records.files_signature(p) for run, p in by_id.items()}
    runs = {run: cached_run(str(p), str(root), sigs[run]) for run, p in by_id.items()}
    for rec in runs.values():
        notes.extend(rec.notes)
    return Context(root=root, runs=runs, paths=by_id, signatures=sigs, notes=notes)


def default_selection(training_runs: list[str]) -> list[str]:
    """All runs when there are few, else the last few by name."""
    return training_runs[-MAX_DEFAULT_SELECTED:]
