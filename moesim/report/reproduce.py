"""The ``moesim reproduce --html`` report: moesim's predictions against published runs.

Three views of the same rows (moesim.reproduce.run.CaseResult): predicted against published on
log-log axes (y = x is perfect), the signed error per case against its tolerance, and where
each case's predicted time goes.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go

from moesim.report.common import pct
from moesim.report.figures import LAYOUT, PHASE_COLOURS, TIME_COLOURS
from moesim.report.html import Report, Section
from moesim.reproduce.run import CaseResult, summary
from moesim.specs import POST_TRAINING_PHASES

CLASS_COLOURS = {
    "moe_training": "#F58518",
    "dense_training": "#4C78A8",
    "communication": "#E45756",
    "serving": "#54A24B",
    "memory": "#B279A2",
    "post_training": "#72B7B2",
}
#: the parts of time_breakdown_s that add up to the step (training and serving)
STEP_PARTS = ("compute", "exposed_comm", "bubble", "expert_offload")


def predicted_vs_published(rows: Sequence[CaseResult]) -> go.Figure:
    """One marker per simulated case, one trace per class; the y = x line is a perfect match.
    Metrics of different units share the axes: each point is only compared with the line."""
    fig = go.Figure()
    done = [r for r in rows if r.predicted is not None and r.predicted > 0]
    for cls in dict.fromkeys(r.case_class for r in done):
        mine = [r for r in done if r.case_class == cls]
        fig.add_scatter(
            name=cls.replace("_", " "),
            mode="markers",
            x=[r.published for r in mine],
            y=[r.predicted for r in mine],
            customdata=[[r.id, r.metric, r.source, pct(r.error)] for r in mine],
            hovertemplate="<b>%{customdata[0]}</b><br>%{customdata[1]}: published %{x:.4g}, "
            "predicted %{y:.4g} (%{customdata[3]})<br>%{customdata[2]}<extra></extra>",
            marker={"size": 10, "color": CLASS_COLOURS.get(cls)},
        )
    values = [v for r in done for v in (r.published, r.predicted)]
    if values:
        lo, hi = min(values) / 1.5, max(values) * 1.5
        fig.add_scatter(
            name="y = x",
            mode="lines",
            x=[lo, hi],
            y=[lo, hi],
            line={"color": "#888", "dash": "dot"},
        )
    fig.update_layout(
        title="Predicted against published (each in its metric's unit)",
        xaxis={"type": "log", "title": "published"},
        yaxis={"type": "log", "title": "moesim predicted"},
        **LAYOUT,
    )
    return fig


def signed_errors(rows: Sequence[CaseResult]) -> go.Figure:
    """The signed error per case (bars) with each case's tolerance band (± tolerance)."""
    done = [r for r in rows if r.error is not None]
    ids = [r.id for r in done]
    fig = go.Figure()
    fig.add_bar(
        name="± tolerance",
        x=ids,
        y=[2 * r.tolerance for r in done],
        base=[-r.tolerance for r in done],
        marker_color="rgba(84,162,75,0.18)",
        hoverinfo="skip",
    )
    fig.add_bar(
        name="error",
        x=ids,
        y=[r.error for r in done],
        marker_color=[CLASS_COLOURS.get(r.case_class, "#888") for r in done],
        customdata=[[r.metric, r.case_class, r.tolerance] for r in done],
        hovertemplate="<b>%{x}</b> (%{customdata[1]})<br>%{customdata[0]}: %{y:+.1%} "
        "(tolerance ±%{customdata[2]:.0%})<extra></extra>",
    )
    fig.update_layout(
        title="Signed error per case: predicted / published − 1",
        barmode="overlay",
        yaxis={"tickformat": "+.0%", "title": "error"},
        **LAYOUT,
    )
    return fig


def time_breakdowns(rows: Sequence[CaseResult]) -> go.Figure:
    """Each simulated case's predicted step, stacked by where the time goes (post-training by
    phase)."""
    done = [r for r in rows if r.time_breakdown_s]
    ids = [r.id for r in done]
    keys = [k for k in (*STEP_PARTS, *POST_TRAINING_PHASES) if any(_part(r, k) for r in done)]
    fig = go.Figure()
    for key in keys:
        fig.add_bar(
            name=key.replace("_", " "),
            y=ids,
            x=[_part(r, key) for r in done],
            orientation="h",
            marker_color=TIME_COLOURS.get(key) or PHASE_COLOURS.get(key),
        )
    fig.update_layout(
        barmode="stack",
        title="Predicted time breakdown (s)",
        xaxis_title="seconds",
        **LAYOUT,
    )
    fig.update_layout(height=max(300, 40 * len(done) + 150))
    return fig


def _part(r: CaseResult, key: str) -> float:
    """A part of the case's step; post-training cases stack their phases, not the totals."""
    tb = r.time_breakdown_s
    has_phases = any(k in tb for k in POST_TRAINING_PHASES)
    if has_phases != (key in POST_TRAINING_PHASES):
        return 0.0
    return float(tb.get(key, 0.0))


def _table(rows: Sequence[CaseResult]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in ("case", "class", "metric", "published", "predicted", "error", "within", "source")
    )
    body = []
    for r in rows:
        pred = f"{r.predicted:.4g}" if r.predicted is not None else html.escape(r.reason or "")
        within = "" if r.within is None else ("✓" if r.within else "✗")
        cells = (r.id, r.case_class, r.metric, f"{r.published:.4g}", pred,
                 pct(r.error) if r.error is not None else "–", within, r.source)  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table class='kv'><tr>{head}</tr>{''.join(body)}</table>"


def reproduce_report(rows: Sequence[CaseResult]) -> Report:
    """The whole page: lead with the overall figures, then the three views and the table."""
    s = summary(list(rows))["overall"]
    lead = (
        f"{s['n']} published cases, {s['n_simulated']} simulated, {s['n_within']} within their "
        f"tolerance; median |error| {pct(s['median_abs_error'])}, max {pct(s['max_abs_error'])}."
        " Published runs validate moesim; nothing was tuned to match them."
    )
    rep = Report("moesim: how far from reality", lead)
    rep.add(Section("Predicted against published", figures=[predicted_vs_published(rows)]))
    rep.add(Section("Error per case", figures=[signed_errors(rows)]))
    rep.add(Section("Where each predicted step goes", figures=[time_breakdowns(rows)]))
    rep.add(Section("Every case", _table(rows)))
    return rep
