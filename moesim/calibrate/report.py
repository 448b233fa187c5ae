"""The validation report: one self-contained HTML page (plotly.js inlined, no network) with
predicted against measured time for every held-out measurement, the relative errors per op
class, and the table that ``validation`` holds."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

_SHAPE = ("m", "n", "k", "tokens", "experts", "top_k", "hidden", "ffn_hidden", "seq_len",
          "batch", "heads", "head_dim")  # fmt: skip


def _label(r: dict[str, Any]) -> str:
    parts = [f"{r['op']} {r['pass']} {r['dtype']}"]
    for c in _SHAPE:
        v = r.get(c)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            parts.append(f"{c}={int(v)}")
    if r.get("op_class") in ("moe_layer", "step") and isinstance(r.get("note"), str):
        try:
            note = json.loads(r["note"])
            parts += [f"{k}={v}" for k, v in note.items() if k in ("routing", "load_cv", "model")]
        except json.JSONDecodeError:
            pass
    return " ".join(parts)


def figures(pred: pd.DataFrame):
    import plotly.graph_objects as go

    scored = pred[(pred["skipped"].fillna("") == "") & pred["predicted_s"].notna()].copy()
    scored["rel_err"] = (scored["predicted_s"] - scored["time_s_median"]) / scored["time_s_median"]
    scatter = go.Figure()
    for cls, g in scored.groupby("op_class", sort=False):
        scatter.add_trace(
            go.Scatter(
                x=g["time_s_median"],
                y=g["predicted_s"],
                mode="markers",
                name=str(cls),
                text=[_label(r) for r in g.to_dict("records")],
                hovertemplate="%{text}<br>measured %{x:.3g} s<br>predicted %{y:.3g} s",
            )
        )
    if len(scored):
        lo = float(min(scored["time_s_median"].min(), scored["predicted_s"].min())) / 1.5
        hi = float(max(scored["time_s_median"].max(), scored["predicted_s"].max())) * 1.5
        for f, dash, name in ((1.0, "solid", "exact"), (1.25, "dot", "±25%"), (0.8, "dot", None)):
            scatter.add_trace(
                go.Scatter(
                    x=[lo, hi],
                    y=[lo * f, hi * f],
                    mode="lines",
                    line={"color": "gray", "dash": dash, "width": 1},
                    name=name or "",
                    showlegend=name is not None,
                    hoverinfo="skip",
                )
            )
    scatter.update_layout(
        title="Predicted vs measured time (held-out measurements)",
        xaxis={"title": "measured (s)", "type": "log"},
        yaxis={"title": "predicted (s)", "type": "log"},
        height=620,
    )
    errors = go.Figure()
    for cls, g in scored.groupby("op_class", sort=False):
        errors.add_trace(
            go.Box(
                y=g["rel_err"],
                name=str(cls),
                boxpoints="all",
                text=[_label(r) for r in g.to_dict("records")],
                hovertemplate="%{text}<br>(pred − meas)/meas = %{y:.1%}",
            )
        )
    errors.update_layout(
        title="Signed relative error (predicted − measured) / measured",
        yaxis={"title": "relative error", "tickformat": ".0%"},
        height=480,
    )
    return scatter, errors


def _table(validation: dict[str, Any]) -> str:
    rows = []
    for cls, v in validation.items():
        if cls.startswith("_"):
            continue

        def pct(x):
            return "–" if x is None else f"{100 * x:.1f}%"

        extra = ""
        if v.get("not_simulated"):
            extra = "not simulated yet: " + ", ".join(v["not_simulated"])
        rows.append(
            f"<tr><td>{html.escape(cls)}</td><td>{v['n']}</td>"
            f"<td>{pct(v['median_abs_rel_error'])}</td><td>{pct(v['max_abs_rel_error'])}</td>"
            f"<td>{html.escape(str(v.get('method', '')))}</td><td>{html.escape(extra)}</td></tr>"
        )
    head = (
        "<tr><th>op class</th><th>n</th><th>median |rel. error|</th><th>max |rel. error|</th>"
        "<th>predicted by</th><th></th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def write_report(
    pred: pd.DataFrame, validation: dict[str, Any], path: str | Path, title: str
) -> Path:
    """The report page, all or nothing (moesim.file_io.write_atomic)."""
    from moesim.file_io import write_atomic

    return write_atomic(path, render_report(pred, validation, title), make_parents=True)


def render_report(pred: pd.DataFrame, validation: dict[str, Any], title: str) -> str:
    """The report page's HTML: measured against predicted, and the error table."""
    scatter, errors = figures(pred)
    split = validation.get("_split", {})
    body = [
        f"<h1>{html.escape(title)}</h1>",
        "<p>Each point is one held-out measurement: the simulator's prediction (cost model for "
        "single ops, <code>moesim.sim.run.simulate</code> for MoE layers and training steps) "
        "from a profile fitted <em>without</em> it, against the measured median time. "
        f"Fit rows: {split.get('fit_rows', '?')}, held out: {split.get('held_out_rows', '?')}, "
        f"date: {html.escape(str(split.get('date', '')))}.</p>",
        _table(validation),
        scatter.to_html(full_html=False, include_plotlyjs=True),
        errors.to_html(full_html=False, include_plotlyjs=False),
    ]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
