"""Plotly figures of simulation results: one function per figure, data in, figure out.

Figures take plain data (Result objects, trace events, matrices) so that they can be drawn for a
single scenario, a comparison, a sweep or a plan alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from moesim.specs import POST_TRAINING_PHASES, Result

# One colour per kind of time, used by every figure so a reader learns them once.
TIME_COLOURS = {
    "compute": "#4C78A8",
    "all_to_all": "#F58518",
    "tp_comm": "#E45756",
    "dp_comm": "#72B7B2",
    "pp_comm": "#54A24B",
    "bubble": "#BAB0AC",
    "imbalance": "#D8B5A5",
    "exposed_comm": "#EECA3B",
    "expert_offload": "#9D755D",
}
MEMORY_COLOURS = {
    "weights": "#4C78A8",
    "gradients": "#72B7B2",
    "optimizer": "#54A24B",
    "activations": "#F58518",
    "kv_cache": "#B279A2",
    "other": "#BAB0AC",
}
# Post-training phases, in the order a step runs them (moesim.sim.post_training); each result's
# time_breakdown_s holds the ones its stage runs, and they sum to its step time.
PHASES = POST_TRAINING_PHASES
PHASE_COLOURS = {
    "optimizer_offload": "#D4A6C8",
    "engine_wake": "#FF9DA6",
    "weight_sync": "#E45756",
    "rollout": "#F58518",
    "reward": "#EECA3B",
    "old_logprobs": "#9D755D",
    "reference": "#72B7B2",
    "values": "#B279A2",
    "gae": "#BAB0AC",
    "engine_sleep": "#FF9DA6",
    "optimizer_reload": "#D4A6C8",
    "training": "#4C78A8",
    "critic_training": "#54A24B",
}
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=50, b=50), height=380)


def step_breakdown(results: Sequence[Result]) -> go.Figure:
    """Where each step's time goes: compute, exposed communication, the pipeline bubble and
    the wait for a slower pipeline stage (imbalance) stack to the step time; the communication
    kinds (mostly hidden under compute) are shown beside them as their own bars."""
    names = [r.name for r in results]
    fig = go.Figure()
    stacked = ["compute", "exposed_comm", "bubble", "imbalance"]
    if any(r.time_breakdown_s.get("expert_offload") for r in results):
        stacked.append("expert_offload")  # serving: experts fetched from host memory over PCIe
    for key in stacked:
        fig.add_bar(
            name=key.replace("_", " "),
            y=names,
            x=[r.time_breakdown_s.get(key, 0.0) for r in results],
            orientation="h",
            marker_color=TIME_COLOURS.get(key),
            offsetgroup="step",
        )
    for key in ("all_to_all", "tp_comm", "dp_comm", "pp_comm"):
        fig.add_bar(
            name=f"{key.replace('_', ' ')} (total, overlapped or not)",
            y=names,
            x=[r.time_breakdown_s.get(key, 0.0) for r in results],
            orientation="h",
            marker_color=TIME_COLOURS[key],
            offsetgroup="comm",
            visible="legendonly" if len(results) > 4 else True,
        )
    fig.update_layout(
        barmode="stack",
        title="Step time breakdown (s)",
        xaxis_title="seconds per step",
        **LAYOUT,
    )
    fig.update_layout(height=max(300, 90 * len(results) + 150))
    return fig


def phase_keys(results: Sequence[Result]) -> list[str]:
    """The post-training phases present in any result, in step order."""
    present = {k for r in results for k in r.time_breakdown_s}
    return [k for k in PHASES if k in present]


def phase_utilization_table(results: Sequence[Result]) -> go.Figure | None:
    """MFU and MBU of every phase of every post-training result (``phase_utilization``), each
    over the phase's own time on its own GPUs; None when no result has them."""
    rows = []
    for r in results:
        util = getattr(r, "phase_utilization", None) or {}
        for key in PHASES:
            if key in util:
                u = util[key]
                t = getattr(r, "rollout_time_s", None) if key == "rollout" else None
                seconds = t if t is not None else r.time_breakdown_s.get(key, 0.0)
                rows.append([r.name, key.replace("_", " "), f"{seconds:.3f}",
                             f"{100 * u['mfu']:.1f}%", f"{100 * u['mbu']:.1f}%"])  # fmt: skip
    if not rows:
        return None
    header = ["scenario", "phase", "phase time (s)", "MFU", "MBU"]
    return table(header, rows, "Each phase's MFU (of the bf16 peak) and MBU (of HBM bandwidth)")


def rollout_engine_table(results: Sequence[Result]) -> go.Figure | None:
    """The rollout engine of every GRPO/PPO result: its scheduler, KV pool and what it held at
    its peak, its max_num_seqs and the decode batch it ran, preemptions (recomputed sequences)
    and the tail; None when no result has a rollout."""
    rows = []
    for r in results:
        engine = getattr(r, "rollout_scheduler", None)
        if engine is None:
            continue
        peak = getattr(r, "rollout_peak_kv_tokens", None)
        rows.append([r.name, engine, f"{r.rollout_kv_pool_tokens:,}",
                     "—" if peak is None else f"{peak:,}", r.rollout_concurrency,
                     f"{r.rollout_mean_decode_batch:.1f}", r.rollout_preemptions,
                     f"{100 * r.rollout_tail_fraction:.0f}%"])  # fmt: skip
    if not rows:
        return None
    header = ["scenario", "engine", "KV pool (tokens)", "KV peak (tokens)", "max_num_seqs",
              "mean decode batch", "preemptions", "tail"]  # fmt: skip
    return table(header, rows, "The rollout engine of each replica (the one timed)")


def phase_breakdown(results: Sequence[Result]) -> go.Figure:
    """Where each post-training step's time goes, phase by phase (rollout, reference, training,
    weight sync, ...): the phases run one after another and stack to the step time."""
    names = [r.name for r in results]
    fig = go.Figure()
    for key in phase_keys(results):
        fig.add_bar(
            name=key.replace("_", " "),
            y=names,
            x=[r.time_breakdown_s.get(key, 0.0) for r in results],
            orientation="h",
            marker_color=PHASE_COLOURS.get(key),
            hovertemplate="%{y}<br>" + key + ": %{x:.3f} s<extra></extra>",
        )
    fig.update_layout(
        barmode="stack",
        title="Step time by phase (s)",
        xaxis_title="seconds per step",
        **LAYOUT,
    )
    fig.update_layout(
        height=max(300, 70 * len(results) + 150),
        yaxis=dict(autorange="reversed"),  # a pipeline's stages read top-down
        legend=dict(traceorder="normal"),
    )
    return fig


def memory_breakdown(results: Sequence[Result], capacity_GB: Sequence[float]) -> go.Figure:
    """Memory per GPU by kind, against each GPU's HBM capacity (the red tick)."""
    names = [r.name for r in results]
    fig = go.Figure()
    for key, colour in MEMORY_COLOURS.items():
        fig.add_bar(
            name=key,
            x=names,
            y=[r.memory_per_gpu_GB.get(key, 0.0) for r in results],
            marker_color=colour,
        )
    fig.add_scatter(
        name="HBM capacity",
        x=names,
        y=list(capacity_GB),
        mode="markers",
        marker=dict(symbol="line-ew-open", size=40, color="#D62728", line=dict(width=3)),
    )
    fig.update_layout(barmode="stack", title="Memory per GPU (GB)", yaxis_title="GB", **LAYOUT)
    return fig


def timeline(events: Sequence[dict[str, Any]], max_events: int = 4000) -> go.Figure:
    """A Gantt chart of a simulated step from Chrome-trace events (``ph: X``, µs), one row per
    (rank, stream) track. Long traces are cut to the first ``max_events`` spans."""
    spans = [e for e in events if e.get("ph") == "X"][:max_events]
    names = _track_names(events)
    rows: dict[str, dict[str, list]] = {}
    for e in spans:
        track = names.get((e.get("pid"), e.get("tid")), f"{e.get('pid')}/{e.get('tid')}")
        kind = _span_kind(e)
        row = rows.setdefault(kind, {"y": [], "x": [], "base": [], "text": []})
        row["y"].append(track)
        row["x"].append(e["dur"] / 1e3)
        row["base"].append(e["ts"] / 1e3)
        row["text"].append(e.get("name", ""))
    fig = go.Figure()
    for kind, row in rows.items():
        fig.add_bar(
            name=kind,
            orientation="h",
            textposition="none",
            marker_color=TIME_COLOURS.get(kind),
            hovertemplate="%{text}<br>start %{base:.3f} ms, %{x:.3f} ms<extra></extra>",
            **row,
        )
    tracks = sorted({y for r in rows.values() for y in r["y"]})
    fig.update_layout(
        barmode="overlay",
        title="Simulated timeline of one step",
        xaxis_title="ms",
        yaxis=dict(categoryorder="array", categoryarray=tracks[::-1]),
        **LAYOUT,
    )
    fig.update_layout(height=max(300, 28 * len(tracks) + 150))
    return fig


def _track_names(events: Sequence[dict[str, Any]]) -> dict[tuple, str]:
    """Track labels from the trace's ``thread_name``/``process_name`` metadata events."""
    procs = {
        e["pid"]: e["args"]["name"]
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    out = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            out[(e["pid"], e["tid"])] = f"{procs.get(e['pid'], e['pid'])} · {e['args']['name']}"
    return out


def _span_kind(e: dict[str, Any]) -> str:
    cat = str(e.get("cat", "")).lower()
    name = str(e.get("name", "")).lower()
    for key, words in (
        ("all_to_all", ("dispatch", "combine", "all_to_all", "a2a")),
        ("tp_comm", ("tp_", "tp ")),
        ("dp_comm", ("dp_", "grad", "reduce_scatter", "all_gather")),
        ("pp_comm", ("pp_", "send", "recv")),
        ("bubble", ("bubble", "idle")),
    ):
        if cat == key or any(w in name for w in words):
            return key
    return "compute" if cat in ("", "compute") else cat


def heatmap(matrix: Sequence[Sequence[float]], labels: Sequence[str], title: str) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(labels),
            y=list(labels),
            colorscale="Viridis",
            zmin=0,
            colorbar=dict(title="MB"),
            hovertemplate="from %{y} to %{x}: %{z:.2f} MB<extra></extra>",
        )
    )
    fig.update_layout(title=title, xaxis_title="to", yaxis_title="from", **LAYOUT)
    fig.update_layout(height=460, yaxis=dict(autorange="reversed"))
    return fig


def curve(
    x: Sequence[Any],
    ys: dict[str, Sequence[float | None]],
    title: str,
    x_title: str,
    y_title: str,
    log_x: bool = False,
) -> go.Figure:
    """One line per entry of ``ys`` over the shared ``x``; a None leaves a gap."""
    return curves({name: (x, y) for name, y in ys.items()}, title, x_title, y_title, log_x)


def curves(
    series: dict[str, tuple[Sequence[Any], Sequence[float | None]]],
    title: str,
    x_title: str,
    y_title: str,
    log_x: bool = False,
) -> go.Figure:
    """One line per entry of ``series``, each with its own x values: {name: (x, y)}."""
    fig = go.Figure()
    for name, (x, y) in series.items():
        fig.add_scatter(name=name, x=list(x), y=list(y), mode="lines+markers")
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, **LAYOUT)
    if log_x:
        ticks = sorted({v for x, _ in series.values() for v in x})
        fig.update_xaxes(type="log", tickvals=ticks, ticktext=[str(v) for v in ticks])
    return fig


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], title: str) -> go.Figure:
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in header]
    fig = go.Figure(
        go.Table(
            columnwidth=[3] + [1] * (len(header) - 1),  # the first column holds names
            header=dict(values=list(header), fill_color="#E8EEF6", align="left"),
            cells=dict(values=[list(c) for c in cols], align="left"),
        )
    )
    fig.update_layout(title=title, **LAYOUT)
    fig.update_layout(height=min(900, 120 + 32 * max(1, len(rows))))
    return fig


def pareto(points: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]]) -> go.Figure:
    """Run time against cost of every simulated configuration, the Pareto front joined."""
    fig = go.Figure()
    fig.add_scatter(
        name="simulated",
        x=[p["run_days"] for p in points],
        y=[p["run_cost_usd"] for p in points],
        text=[p["name"] for p in points],
        mode="markers",
        marker=dict(color="#BAB0AC"),
        hovertemplate="%{text}<br>%{x:.2f} days, $%{y:,.0f}<extra></extra>",
    )
    fig.add_scatter(
        name="Pareto front",
        x=[p["run_days"] for p in front],
        y=[p["run_cost_usd"] for p in front],
        text=[p["name"] for p in front],
        mode="lines+markers",
        marker=dict(color="#D62728", size=9),
        hovertemplate="%{text}<br>%{x:.2f} days, $%{y:,.0f}<extra></extra>",
    )
    fig.update_layout(title="Run time vs cost", xaxis_title="days", yaxis_title="USD", **LAYOUT)
    return fig


def serving_pareto(
    points: Sequence[dict[str, Any]],
    front: Sequence[dict[str, Any]],
    rejected: Sequence[dict[str, Any]] = (),
) -> go.Figure:
    """p99 time per output token against dollars per hour of every simulated serving layout:
    those meeting the SLOs (grey), the Pareto front (red) and the rejected ones (crosses)."""
    fig = go.Figure()
    for name, rows, marker, mode in (
        ("meets the SLOs", points, dict(color="#BAB0AC"), "markers"),
        ("misses an SLO", rejected, dict(color="#9D755D", symbol="x"), "markers"),
        ("Pareto front", front, dict(color="#D62728", size=9), "lines+markers"),
    ):
        fig.add_scatter(
            name=name,
            x=[p["usd_per_hour"] for p in rows],
            y=[1e3 * p["tpot_s_p99"] if p["tpot_s_p99"] else None for p in rows],
            text=[p["name"] for p in rows],
            mode=mode,
            marker=marker,
            hovertemplate="%{text}<br>$%{x:,.0f}/h, p99 TPOT %{y:.1f} ms<extra></extra>",
        )
    fig.update_layout(
        title="p99 time per output token vs cost per hour",
        xaxis_title="USD per hour",
        yaxis_title="p99 TPOT (ms)",
        **LAYOUT,
    )
    return fig
