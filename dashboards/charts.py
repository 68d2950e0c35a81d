"""Altair chart builders: tidy frames in, charts out (pure; no Streamlit, no file reading)."""
from __future__ import annotations

import altair as alt
import pandas as pd

from records.gradients import EMPIRICAL

alt.data_transformers.disable_max_rows()

HEIGHT = 260


def line_chart(tidy: pd.DataFrame, title: str, y_title: str = "value", color: str = "run",
               dash: str | None = None, facet: str | None = None) -> alt.Chart:
    """Curves of ``value`` vs ``step``: one colour per ``color`` value, optionally one dash
    style per ``dash`` value and one panel per ``facet`` value."""
    enc = dict(x=alt.X("step:Q", title="step"),
               y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False)),
               color=alt.Color(f"{color}:N", title=color),
               tooltip=[color, "metric", "step", alt.Tooltip("value:Q", format=".4g")])
    if dash:
        enc["strokeDash"] = alt.StrokeDash(f"{dash}:N", title=dash)
    chart = alt.Chart(tidy).mark_line(point=len(tidy) <= 400).encode(**enc).interactive()
    if facet:
        return (chart.properties(width=280, height=HEIGHT - 40)
                .facet(facet=alt.Facet(f"{facet}:N", title=None), columns=3, title=title))
    return chart.properties(title=title, height=HEIGHT)


def heatmap(acc: pd.DataFrame, title: str, value: str = "accuracy", diverging: bool = False
            ) -> alt.Chart:
    """Per-prompt heatmap: x = step, y = prompt, colour = ``value`` (one panel per level)."""
    scale = (alt.Scale(scheme="redblue", domain=[-1, 1], reverse=True) if diverging
             else alt.Scale(scheme="viridis", domain=[0, 1]))
    base = alt.Chart(acc).mark_rect().encode(
        x=alt.X("step:O", title="step", axis=alt.Axis(labelOverlap=True)),
        y=alt.Y("prompt_id:N", title="prompt", sort="ascending", axis=alt.Axis(labelLimit=80)),
        color=alt.Color(f"{value}:Q", scale=scale, title=value),
        tooltip=["prompt_id", "level", "step", alt.Tooltip(f"{value}:Q", format=".3f")])
    return base.properties(width=300, height=alt.Step(8)).facet(
        column=alt.Column("level:N", title="level"), title=title)


def passk_chart(curves: pd.DataFrame, title: str) -> alt.Chart:
    """pass@k vs k (log₂ x-axis) with 95% CI bands; colour = run, dash = base/trained."""
    base = alt.Chart(curves).encode(
        x=alt.X("k:Q", scale=alt.Scale(type="log", base=2), title="k (log₂)"),
        color=alt.Color("run:N"))
    band = base.mark_area(opacity=0.15).encode(y="lo:Q", y2="hi:Q", detail="checkpoint:N")
    line = base.mark_line(point=True).encode(
        y=alt.Y("value:Q", title="pass@k", scale=alt.Scale(domain=[0, 1])),
        strokeDash=alt.StrokeDash("checkpoint:N"),
        tooltip=["run", "checkpoint", "step", "k", alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("lo:Q", format=".3f"), alt.Tooltip("hi:Q", format=".3f")])
    return ((band + line).properties(width=320, height=HEIGHT)
            .facet(column=alt.Column("benchmark:N"), title=title))


def sweep_chart(rows: pd.DataFrame, title: str, x_title: str, log_x: bool = True) -> alt.Chart:
    """A probe metric vs a setting (G or staleness K), one line per ``series`` (estimator),
    CI error bars; one panel per metric, each with its own y scale."""
    scale = alt.Scale(type="log", base=2) if log_x else alt.Scale()
    base = alt.Chart().encode(x=alt.X("x:Q", title=x_title, scale=scale),
                              color=alt.Color("series:N", title="estimator"))
    line = base.mark_line(point=True).encode(
        y=alt.Y("value:Q", title="value", scale=alt.Scale(zero=False)),
        tooltip=["estimator", "setting", "metric", alt.Tooltip("value:Q", format=".4g")])
    bars = base.mark_errorbar().encode(y=alt.Y("lo:Q", title="value"), y2="hi:Q")
    last = base.transform_window(rank="rank()", sort=[alt.SortField("x", order="descending")],
                                 groupby=["series", "metric"]).transform_filter("datum.rank == 1")
    labels = last.mark_text(align="left", dx=6, fontSize=10).encode(
        y=alt.Y("value:Q", title="value"), text="series:N")
    return (alt.layer(line, bars, labels, data=rows).properties(width=260, height=220)
            .facet(column=alt.Column("metric:N"), title=title)
            .resolve_scale(y="independent"))


def bar_chart(df: pd.DataFrame, x: str, y: str, color: str, title: str) -> alt.Chart:
    """Grouped bars: one group per ``x``, one bar per ``color``."""
    return (alt.Chart(df, title=title).mark_bar().encode(
        x=alt.X(f"{x}:N", title=x), xOffset=f"{color}:N", y=alt.Y(f"{y}:Q", title=y),
        color=f"{color}:N", tooltip=[x, color, alt.Tooltip(f"{y}:Q", format=".4g")])
        .properties(height=HEIGHT))


PLANE_TITLES = {"trCov": "tr Cov of one update (log)", "cos": "cos to the reference gradient",
                "rel_bias": "relative bias ‖E ĝ − ∇J‖ / ‖∇J‖"}


def plane_chart(points: pd.DataFrame, title: str, y: str) -> alt.Chart:
    """The bias–variance plane: x = tr Cov of one update (symlog), y = the bias measure ``y``,
    one point per estimator labelled with its name, 95% CI bars on both axes."""
    base = alt.Chart(points).encode(
        x=alt.X("x:Q", title=PLANE_TITLES.get("trCov"), scale=alt.Scale(type="symlog")),
        y=alt.Y("y:Q", title=PLANE_TITLES.get(y, y), scale=alt.Scale(zero=False)),
        color=alt.Color("estimator:N", title="estimator", legend=None))
    tooltip = ["estimator", "setting", alt.Tooltip("x:Q", title="trCov", format=".4g"),
               alt.Tooltip("y:Q", title=y, format=".4g")]
    dots = base.mark_point(filled=True, size=60).encode(tooltip=tooltip)
    labels = base.mark_text(align="left", dx=7, dy=-6, fontSize=11).encode(text="estimator:N")
    xbars = base.mark_errorbar().encode(x=alt.X("x_lo:Q", title=PLANE_TITLES.get("trCov")), x2="x_hi:Q")
    ybars = base.mark_errorbar().encode(y=alt.Y("y_lo:Q", title=PLANE_TITLES.get(y, y)), y2="y_hi:Q")
    return alt.layer(xbars, ybars, dots, labels).properties(title=title, width=560, height=380)


def weight_chart(weights: pd.DataFrame, title: str) -> alt.Chart:
    """Prompt weight w against pass rate p: the exact w(p, G) as a line through the levels'
    pass rates, the realised weights as filled points labelled with their level; colour = run."""
    enc = dict(x=alt.X("p:Q", title="pass rate p of the level's rollouts", scale=alt.Scale(domain=[0, 1])),
               y=alt.Y("w:Q", title="weight w of ∇p in the update", scale=alt.Scale(zero=False)),
               color=alt.Color("run:N", title="run"),
               tooltip=["run", "level", "kind", alt.Tooltip("p:Q", format=".3f"),
                        alt.Tooltip("w:Q", format=".4g"), "steps"])
    base = alt.Chart(weights).encode(**enc)
    exact = base.transform_filter(alt.datum.kind != EMPIRICAL).mark_line(
        point=alt.OverlayMarkDef(shape="diamond", filled=False, size=70), strokeDash=[5, 3]).encode(
        detail="kind:N", order="p:Q")
    real = base.transform_filter(alt.datum.kind == EMPIRICAL).mark_point(
        filled=True, size=90)
    labels = base.transform_filter(alt.datum.kind == EMPIRICAL).mark_text(
        dx=8, dy=-8, align="left").encode(text="level:N")
    return alt.layer(exact, real, labels).properties(title=title, height=HEIGHT + 40)
