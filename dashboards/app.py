"""Dashboard over run records: ``python -m dashboards [--runs DIR] [--port N]`` (127.0.0.1 only,
no usage statistics; see dashboards/__main__.py), or ``streamlit run dashboards/app.py
--server.address 127.0.0.1 --browser.gatherUsageStats false [-- --runs DIR]``.

The runs directory is ``--runs DIR`` after ``--``, else $UPGE_RUNS_DIR, else ./runs. Only that
directory is read; records go through :mod:`records` (JSON only, never pickles); torch is never
imported. ``?page=Training`` in the URL opens a page directly.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

# `streamlit run dashboards/app.py` puts only dashboards/ on sys.path; the project root holds
# the `records` module and the `dashboards` package.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboards import state  # noqa: E402
from dashboards.views import PAGES  # noqa: E402
from records import comparison, tables  # noqa: E402

MAX_NOTES_SHOWN = 20
FIRST_RUN_COMMAND = "python -m training.run hpt"


def page_index(requested: str | None) -> int:
    """Index of the page named in the URL (``?page=...``), else the first page."""
    names = list(PAGES)
    return names.index(requested) if requested in names else 0


def show_notes(notes: list[str], where=st) -> None:
    """Skipped (truncated or corrupt) records, as a warning box at ``where``."""
    notes = list(dict.fromkeys(notes))  # a record read by two parts of a page: one note
    if not notes:
        return
    shown = "\n".join(f"- {n}" for n in notes[:MAX_NOTES_SHOWN])
    more = len(notes) - MAX_NOTES_SHOWN
    where.warning(f"Skipped {len(notes)} unreadable record(s):\n{shown}"
               + (f"\n- … and {more} more" if more > 0 else ""), icon="⚠️")


def show_empty(root) -> None:
    """What an empty runs directory looks like: how to create a first run."""
    st.title("No runs yet")
    st.info(f"No run records found in `{root}`. Create a first run (the embedded default, a "
            "few minutes on CPU), then refresh this page:")
    st.code(FIRST_RUN_COMMAND, language="bash")
    st.caption(f"Another directory: `python -m dashboards --runs DIR` or "
               f"`{tables.ENV_RUNS_DIR}=DIR`.")


def sidebar(ctx: state.Context) -> str:
    """Page choice, run selection and refresh; returns the chosen page."""
    page = st.sidebar.radio("Page", list(PAGES), key="page",
                            index=page_index(st.query_params.get("page")))
    st.sidebar.caption(f"Runs directory: `{ctx.root}`")
    training = ctx.training_runs
    ctx.selected = st.sidebar.multiselect("Runs shown", training, key="selected_runs",
                                          default=state.default_selection(training))
    if st.sidebar.button("Refresh", help="Re-read records that changed on disk"):
        st.rerun()
    return page


def main(argv: list[str]) -> None:
    """Render the chosen page over the runs directory."""
    st.set_page_config(page_title="UPGE runs", layout="wide")
    root = tables.resolve_runs_dir(argv, os.environ)
    ctx = state.load_context(root)
    if not ctx.runs:
        if comparison.find(root):  # only comparisons of training.compare (their runs lie deeper)
            top = st.container()
            PAGES["Compare"](ctx)
            show_notes(ctx.notes, top)
            return
        show_notes(ctx.notes)
        show_empty(root)
        return
    page = sidebar(ctx)
    top = st.container()  # filled last, so notes from every reader of the page are shown
    PAGES[page](ctx)
    show_notes(ctx.notes, top)


main(sys.argv[1:])
