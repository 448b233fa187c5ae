"""The report of one scenario: its verdict, a simulated step's timeline, one MoE layer's
all-to-all traffic, sensitivity curves, and the assumptions the numbers rest on (the specs as
simulated, the calibration profile and its measured prediction error).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from moesim.report import figures, serving
from moesim.report.common import money as _money
from moesim.report.common import ms, variant
from moesim.report.common import num as _num
from moesim.report.common import pct as _pct
from moesim.report.html import Report, Section, kv_table, pre
from moesim.sim.profile import resolve_profile
from moesim.sim.routing_load import expert_probabilities
from moesim.sim.run import simulate
from moesim.specs import InferenceWorkload, Result, Scenario

SECONDS_PER_DAY = 86_400.0


def verdict(s: Scenario, r: Result) -> str:
    """One paragraph a newcomer can read: how fast, where the time goes, fits, what it costs."""
    cap = s.cluster.gpu.hbm_GB
    mem = r.memory_per_gpu_GB.get("total", 0.0)
    fit = (
        f"fits in memory ({mem:.0f} of {cap:.0f} GB per GPU)"
        if r.fits_in_memory
        else f"<b>does not fit</b> in memory ({mem:.0f} GB needed per GPU, {cap:.0f} GB available)"
    )
    if isinstance(s.workload, InferenceWorkload) or r.stage == "inference":
        usd = serving.usd_per_million_tokens(r)
        return (
            f"{s.model.name} serving on {s.gpus}× {s.cluster.gpu.name}: "
            f"{_num(r.output_tokens_per_s)} output tokens/s "
            f"({_num(r.tokens_per_s_per_gpu)} per GPU"
            + (f", ${usd:,.2f} per million" if usd is not None else "")
            + f"), TTFT p50 {ms(r.ttft_s_p50)} / p99 {ms(r.ttft_s_p99)}, "
            f"TPOT p50 {ms(r.tpot_s_p50)} / p99 {ms(r.tpot_s_p99)}; {fit}."
        )
    step = r.step_time_s or 0.0
    tb = r.time_breakdown_s
    parts = ", ".join(
        f"{_pct(tb.get(k, 0.0) / step if step else None)} {label}"
        for k, label in (
            ("compute", "compute"),
            ("exposed_comm", "exposed communication"),
            ("bubble", "pipeline bubble or waiting"),
            ("imbalance", "waiting for a slower pipeline stage"),
        )
    )
    text = (
        f"{s.model.name} {r.stage} on {r.gpus}× {s.cluster.gpu.name}: one step takes "
        f"{step:.3f} s at {_pct(r.mfu)} MFU ({_num(r.tokens_per_s)} tokens/s). "
        f"The step is {parts}. It {fit}."
    )
    if len(figures.phase_keys([r])) > 1:
        text += f" By phase: {phase_shares(r)}."
    if r.gpu_hours is not None:
        days = r.gpu_hours / r.gpus / 24
        text += (
            f" {getattr(s.workload, 'total_tokens', 0):.3g} tokens take {r.gpu_hours:,.0f} "
            f"GPU-hours, {_money(r.cost_usd)} and {days:.1f} days."
        )
    if r.goodput is not None:
        text += f" {goodput_sentence(r)}"
    return text


def goodput_sentence(r: Result) -> str:
    """With reliability: goodput beside throughput, and what failures add to the run."""
    rel = r.reliability or {}
    text = (
        f"With failures (job MTBF {rel.get('job_mtbf_hours', 0):.2g} h), a checkpoint every "
        f"{_num(rel.get('checkpoint_interval_s'))} s ({rel.get('checkpoint_write_s', 0):.3g} s "
        f"to write) and restarts, goodput is {_pct(r.goodput)}: "
        f"{_num(r.effective_tokens_per_s)} tokens/s over the run"
    )
    if r.effective_gpu_hours is not None:
        text += (
            f", {_num(rel.get('interruptions'))} interruptions, "
            f"{_num(r.effective_gpu_hours)} GPU-hours, {_money(r.effective_cost_usd)} and "
            f"{rel.get('run_days', 0):.1f} days"
        )
    return text + "."


# -- simulations ------------------------------------------------------------------------------
def simulate_with_trace(s: Scenario, base_dir: Path | None = None) -> tuple[Result, list[dict]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        r = simulate(s, trace_path=path, base_dir=base_dir)
        events = json.loads(path.read_text())["traceEvents"] if path.exists() else []
    return r, events


def _sweep(
    s: Scenario, values: Sequence[Any], make: Callable[[Any], Scenario | None], base_dir
) -> tuple[list[Any], list[Result]]:
    xs, rs = [], []
    for v in values:
        sv = make(v)
        if sv is None:
            continue
        try:
            rs.append(simulate(sv, base_dir=base_dir))
        except ValueError:
            continue
        xs.append(v)
    return xs, rs


def sensitivity_figures(s: Scenario, base_dir: Path | None = None) -> list:
    """Curves of step time (or decode TPOT) against the knobs that move MoE costs most."""
    figs = []
    m, p = s.model, s.parallel
    if isinstance(s.workload, InferenceWorkload):
        if s.workload.batch_size is not None:
            return serving.decode_batch_figures([serving.decode_batch_curve(s, base_dir)])
        return serving.load_figures(*serving.load_curve(s, base_dir))
    if m.moe is not None:
        attn_ranks = p.tp * p.cp * p.dp_size
        eps = [
            e
            for e in (1, 2, 4, 8, 16, 32, 64, 128, 256)
            if m.moe.n_routed_experts % e == 0 and attn_ranks % (e * p.etp) == 0
        ]
        xs, rs = _sweep(s, eps, lambda e: variant(s, parallel__ep=e), base_dir)
        figs.append(_step_curve(xs, rs, "Step time vs expert-parallel size", "ep"))
        skews = [0.0, 0.5, 1.0, 1.5]
        xs, rs = _sweep(
            s, skews,
            lambda k: variant(s, routing__distribution="zipf", routing__skew=k), base_dir,
        )  # fmt: skip
        figs.append(_step_curve(xs, rs, "Step time vs routing skew (Zipf exponent)", "skew"))
        cfs = [1.0, 1.25, 1.5, 2.0, None]
        xs, rs = _sweep(
            s, cfs,
            lambda c: variant(
                s, model__moe__capacity_factor=c, routing__distribution="zipf", routing__skew=1.0
            ),
            base_dir,
        )  # fmt: skip
        labels = ["dropless" if c is None else str(c) for c in xs]
        fig = _step_curve(labels, rs, "Step time vs capacity factor (Zipf 1.0 routing)", "cf")
        fig.add_scatter(
            name="tokens dropped (%)",
            x=labels,
            y=[100 * getattr(r, "tokens_dropped_fraction", 0.0) for r in rs],
            yaxis="y2",
            mode="lines+markers",
        )
        fig.update_layout(yaxis2=dict(title="dropped %", overlaying="y", side="right"))
        figs.append(fig)
    if s.cluster.nodes > 1:
        base = s.cluster.inter.nic_Gbps
        factors = [0.25, 0.5, 1.0, 2.0, 4.0]
        xs, rs = _sweep(
            s, factors,
            lambda f: variant(s, cluster__inter_node__nic_Gbps=base * f), base_dir,
        )  # fmt: skip
        figs.append(
            _step_curve(
                [base * f for f in xs], rs, "Step time vs inter-node NIC speed", "Gb/s per NIC"
            )
        )
    return figs


def _step_curve(xs: Sequence[Any], rs: Sequence[Result], title: str, x_title: str):
    return figures.curve(
        list(xs),
        {
            "step time (s)": [r.step_time_s for r in rs],
            "exposed comm (s)": [r.time_breakdown_s.get("exposed_comm") for r in rs],
        },
        title,
        x_title,
        "seconds",
    )


def traffic_matrix_MB(s: Scenario, base_dir: Path | None = None) -> tuple[np.ndarray, list[str]]:
    """Expected dispatch bytes (MB) between the ranks of one EP group for one MoE layer and
    microbatch, from the routing distribution: GPU i sends each token copy to the rank holding
    its expert. Large groups are summed per node."""
    m, p = s.model, s.parallel
    assert m.moe is not None
    probs = expert_probabilities(s.routing, m.moe.n_routed_experts, base_dir)
    per_rank = probs.reshape(p.ep, -1).sum(axis=1)  # (R,) share of copies each rank receives
    seq = getattr(s.workload, "seq_len", 4096)
    tokens = getattr(s.workload, "tokens_per_gpu", None) or p.microbatch_size * seq / p.cp
    copy_bytes = m.d_model * s.precision.dispatch_bytes
    matrix = np.outer(np.full(p.ep, tokens * m.moe.top_k * copy_bytes), per_rank) / 1e6
    labels = [f"gpu{i}" for i in range(p.ep)]
    if p.ep > 32:
        per_node = max(1, s.cluster.gpus_per_node // p.etp)
        n = p.ep // per_node
        matrix = matrix.reshape(n, per_node, n, per_node).sum(axis=(1, 3))
        labels = [f"node{i}" for i in range(n)]
    return matrix, labels


def assumptions_html(s: Scenario) -> str:
    profile = resolve_profile(s.simulation.profile, s.cluster.gpu.name)
    rows = [("calibration profile", profile.device), ("profile source", profile.source)]
    validation = getattr(profile, "validation", None)
    if validation:
        rows.append(("measured prediction error", pre(json.dumps(validation, indent=1))))
    else:
        rows.append(
            (
                "measured prediction error",
                "none: this profile has no validation block (not calibrated on this GPU); "
                "treat efficiencies as stated assumptions",
            )
        )
    spec = yaml.safe_dump(
        s.model_dump(mode="json", exclude={"model": {"source"}}), sort_keys=False, width=100
    )
    return (
        kv_table(rows)
        + "<details><summary>The scenario as simulated (every spec field)</summary>"
        + pre(spec)
        + "</details>"
    )


def _summary_rows(s: Scenario, r: Result) -> list[tuple[str, str]]:
    p = s.parallel
    rows = [
        ("model", f"{s.model.name}: {r.params_total / 1e9:.1f} B parameters, "
                  f"{r.params_active / 1e9:.1f} B active"),
        ("cluster", f"{s.cluster.nodes} × {s.cluster.gpus_per_node} {s.cluster.gpu.name}"),
        ("parallelism", f"tp {p.tp} · cp {p.cp} · pp {p.pp} · dp {p.dp} · ep {p.ep} · etp {p.etp}"
                        f", ZeRO-{p.zero_stage}, microbatch {p.microbatch_size}, recompute "
                        f"{p.recompute}, {p.schedule}"),
        ("workload", s.workload.stage),
    ]  # fmt: skip
    if r.step_time_s is not None:
        rows += [
            ("step time", f"{r.step_time_s:.3f} s"),
            ("tokens/s", f"{_num(r.tokens_per_s)} ({_num(r.tokens_per_s_per_gpu)} per GPU)"),
            ("MFU", _pct(r.mfu)),
        ]
    if r.gpu_hours is not None:
        rows += [("GPU-hours", _num(r.gpu_hours)), ("cost", _money(r.cost_usd))]
    if r.goodput is not None:
        rows += [("goodput", _pct(r.goodput)),
                 ("tokens/s over the run", _num(r.effective_tokens_per_s))]  # fmt: skip
        if r.effective_gpu_hours is not None:
            rows += [("GPU-hours with failures", _num(r.effective_gpu_hours)),
                     ("cost with failures", _money(r.effective_cost_usd))]  # fmt: skip
    return rows


# -- the four kinds of report --------------------------------------------------------------
def scenario_report(s: Scenario, base_dir: Path | None = None, sensitivity: bool = True) -> Report:
    r, events = simulate_with_trace(s, base_dir)
    rep = Report(f"moesim: {s.name}", verdict(s, r))
    rep.add(Section("Summary", kv_table(_summary_rows(s, r))))
    rep.add(Section("Where the step time goes", figures=[figures.step_breakdown([r])]))
    pools = serving.disaggregation_table(r)
    if pools is not None:
        rep.add(Section("Prefill and decode pools", figures=[pools]))
    phases = phase_section([r])
    if phases is not None:
        rep.add(phases)
    rep.add(
        Section(
            "Memory per GPU",
            figures=[figures.memory_breakdown([r], [s.cluster.gpu.hbm_GB])],
        )
    )
    for section in detail_sections(s, events, base_dir, sensitivity):
        rep.add(section)
    rep.add(Section("Cost", figures=[cost_table([s], [r])]))
    rep.add(Section("Assumptions", assumptions_html(s)))
    return rep


TIMELINE_NOTE = (
    "<p class='note'>One row per simulated rank and stream; hover for op names. "
    "Symmetric ranks are simulated once.</p>"
)
TRAFFIC_NOTE = (
    "<p class='note'>Expected dispatch megabytes from each rank of one EP group to each other "
    "for one microbatch, under the scenario's routing distribution (combine sends the same "
    "back). Hot columns are overloaded experts.</p>"
)


def detail_sections(
    s: Scenario,
    events: Sequence[dict],
    base_dir: Path | None,
    sensitivity: bool,
    label: str = "",
) -> list[Section]:
    """The timeline of a step, one MoE layer's all-to-all traffic and the sensitivity curves
    of one scenario (``label`` names it where a report holds several)."""
    of = f": {label}" if label else ""
    out = []
    if events:
        fig = figures.timeline(events)
        fig.update_layout(title=f"Simulated timeline of one step{of}")
        out.append(Section(f"Timeline of one simulated step{of}", TIMELINE_NOTE, figures=[fig]))
    if s.model.moe is not None and s.parallel.ep > 1:
        matrix, labels = traffic_matrix_MB(s, base_dir)
        fig = figures.heatmap(matrix, labels, f"Dispatch traffic (MB){of}")
        out.append(Section(f"All-to-all traffic of one MoE layer{of}", TRAFFIC_NOTE, figures=[fig]))
    if sensitivity:
        figs = sensitivity_figures(s, base_dir)
        for fig in figs if label else ():
            fig.update_layout(title=f"{fig.layout.title.text}{of}")
        if figs:
            out.append(Section(f"Sensitivity{of}", figures=figs))
    return out


def cost_table(scenarios: Sequence[Scenario], results: Sequence[Result]):
    header = ["scenario", "GPUs", "step (s)", "tokens/s", "MFU", "mem/GPU (GB)", "fits",
              "GPU-hours", "cost", "days"]  # fmt: skip
    rows = []
    for s, r in zip(scenarios, results, strict=True):
        days = r.gpu_hours / r.gpus / 24 if r.gpu_hours else None
        rows.append(
            [
                s.name, r.gpus, _num(r.step_time_s, ".3f"), _num(r.tokens_per_s), _pct(r.mfu),
                _num(r.memory_per_gpu_GB.get("total"), ".1f"),
                "yes" if r.fits_in_memory else "NO", _num(r.gpu_hours), _money(r.cost_usd),
                _num(days, ".1f"),
            ]
        )  # fmt: skip
    return figures.table(header, rows, "Cost and throughput")


def phase_shares(r: Result) -> str:
    """'rollout 79%, reference 5%, training 16%': each phase's share of the step."""
    step = r.step_time_s or 0.0
    keys = figures.phase_keys([r])
    return ", ".join(
        f"{k.replace('_', ' ')} {_share(r.time_breakdown_s[k] / step if step else None)}"
        for k in keys
        if r.time_breakdown_s[k] > 0
    )


def _share(x: float | None) -> str:
    return "&lt;0.1%" if x is not None and 0 < x < 0.001 else _pct(x)


def phase_section(results: Sequence[Result]) -> Section | None:
    """The phase-by-phase breakdown of post-training steps, when any result has phases."""
    if not any(len(figures.phase_keys([r])) > 1 for r in results):
        return None
    figs = [figures.phase_breakdown(results)]
    util = figures.phase_utilization_table(results)
    if util is not None:
        figs.append(util)
    engine = figures.rollout_engine_table(results)
    if engine is not None:
        figs.append(engine)
    return Section(
        "Where the step time goes, phase by phase",
        "<p class='note'>A post-training step runs its phases one after another (each needs "
        "the previous one's output): generating rollouts, scoring them with the reward and the "
        "frozen reference, copying new weights into the inference engine, and training. "
        "Each bar stacks to the step time. With <code>off_policy_steps</code> on separate "
        "rollout GPUs the next step's rollout runs beside this step's training: its bar is "
        "only the part training did not hide. The table gives each phase's MFU (model FLOPs "
        "over the phase's own time × the bf16 peak) and MBU (weight and KV bytes it must read "
        "over its time × HBM bandwidth): decode is memory-bound, training compute-bound. The "
        "rollout engine's table gives its scheduler, its paged KV pool and what it held at its "
        "peak, and the sequences it preempted (recomputed) when the pool ran out.</p>",
        figures=figs,
    )
