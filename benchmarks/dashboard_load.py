"""How fast the dashboard's first paint is, without a browser.

Builds 50 runs × 500 steps of synthetic records (tests/fixtures_records.py, written through
records.RunWriter) in a temporary directory, then times, in the same process:

  naive parse     json.loads of every metrics line into DataFrames (no tolerance): baseline
  cold load       dashboards.state.load_context (records readers, st.cache_data empty)
  cached load     the same again: files unchanged, so only files_signature + cache hits
  run table       the Runs page's table
  first paint     cold / cached load + run table: the default (Runs) page (target < 3 s)
  training page   its charts for the default selection (Altair -> Vega-Lite spec + Arrow data)
  prompts page    samples of one run -> per-prompt accuracy -> heatmap

Usage: python benchmarks/dashboard_load.py [--runs 50] [--steps 500] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import pandas as pd  # noqa: E402
from streamlit.elements import vega_charts  # noqa: E402

import fixtures_records as fx  # noqa: E402
import records  # noqa: E402
from dashboards import charts, state  # noqa: E402
from dashboards.views import training  # noqa: E402
from records import summary, tables  # noqa: E402

TARGET_FIRST_PAINT_S = 3.0


def build(root: Path, n_runs: int, steps: int, sampled_runs: int = 2) -> None:
    """Write the synthetic runs (samples only for the first few: the Prompts page reads one)."""
    presets = list(fx.TARGET_SKILL)
    for i in range(n_runs):
        spec = fx.RunSpec(f"run{i:03d}-{presets[i % len(presets)]}", presets[i % len(presets)],
                          seed=i, steps=steps, eval_every=10, samples=i < sampled_runs,
                          prompts_per_level=3, n_samples=8)
        fx.write_run(root, spec)


def timed(fn, *args):
    """(seconds, result) of one call."""
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def naive_parse(root: Path) -> int:
    """Baseline: plain json.loads of every metrics line into DataFrames (what the first paint
    reads, without skipping corrupt lines or restoring NaN/inf)."""
    n = 0
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        path = run / records.METRICS
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line]
            n += len(pd.DataFrame(rows))
    return n


def to_spec(chart) -> dict:
    """Serialise a chart as st.altair_chart does (data as Arrow datasets, not inline JSON);
    falls back to Altair's own to_dict if Streamlit's private converter moves."""
    convert = getattr(vega_charts, "_convert_altair_to_vega_lite_spec", None)
    return convert(chart) if convert else chart.to_dict()


def training_charts(ctx: state.Context) -> int:
    """Build and serialise the Training page's charts for the default selection."""
    frames = {r: ctx.runs[r].metrics for r in state.default_selection(ctx.training_runs)}
    built = [to_spec(charts.line_chart(tables.tidy_metrics(frames, names), title))
             for title, names in training.PANELS]
    held = training.held_out_metrics(frames)
    built.append(to_spec(charts.line_chart(tables.tidy_metrics(frames, held), "held-out",
                                           facet="metric")))
    return len(built)


def prompts_page(ctx: state.Context) -> int:
    """Samples of one run -> binned per-prompt accuracy -> heatmap."""
    run = next(r for r in ctx.training_runs
               if (ctx.paths[r] / records.SAMPLES).exists())
    acc = tables.bin_steps(tables.rollout_accuracy(ctx.samples(run)), 60)
    to_spec(charts.heatmap(acc, run))
    return len(acc)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--keep", type=Path,
                        help="write the runs here and keep them (reused if already there)")
    args = parser.parse_args(argv)
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    root = args.keep or Path(tempfile.mkdtemp(prefix="upge-bench-"))
    try:
        reuse = args.keep is not None and any(root.glob("run*"))
        t_build, _ = (0.0, None) if reuse else timed(build, root, args.runs, args.steps)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2 ** 20
        print(f"{'reused' if reuse else 'built'} {args.runs} runs × {args.steps} steps "
              f"({size:.0f} MiB) in {t_build:.1f} s")
        t_naive, _ = timed(naive_parse, root)
        t_cold, ctx = timed(state.load_context, root)
        t_warm, ctx = timed(state.load_context, root)
        t_table, _ = timed(lambda: summary.runs_table(ctx.runs.values()))
        t_charts, _ = timed(training_charts, ctx)
        t_prompts, _ = timed(prompts_page, ctx)
        paint_cold, paint_warm = t_cold + t_table, t_warm + t_table
        rows = [("naive parse (baseline)", t_naive), ("cold load", t_cold),
                ("cached load", t_warm), ("run table", t_table),
                ("first paint, cold", paint_cold), ("first paint, cached", paint_warm),
                ("training page charts", t_charts), ("prompts page (1 run)", t_prompts)]
        print(f"\n{'stage':<24}{'seconds':>9}{'÷ naive':>9}")
        for name, sec in rows:
            print(f"{name:<24}{sec:>9.3f}{sec / t_naive:>9.2f}")
        print(f"\ncached vs cold load: {t_cold / t_warm:.1f}× faster; first paint cold "
              f"{paint_cold:.2f} s (target < {TARGET_FIRST_PAINT_S:.0f} s: "
              f"{'met' if paint_cold < TARGET_FIRST_PAINT_S else 'NOT met'})")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
