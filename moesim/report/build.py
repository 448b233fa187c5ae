"""Reports for a scenario, a comparison, a sweep or a plan: simulate, draw, explain.

Every report ends with its assumptions (the specs as simulated, the calibration profile and its
measured prediction error) so a reader can tell what the numbers rest on.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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


def _assumptions(s: Scenario) -> str:
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
    rep.add(Section("Assumptions", _assumptions(s)))
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
    return Section(
        "Where the step time goes, phase by phase",
        "<p class='note'>A post-training step runs its phases one after another (each needs "
        "the previous one's output): generating rollouts, scoring them with the reward and the "
        "frozen reference, copying new weights into the inference engine, and training. "
        "Each bar stacks to the step time. With <code>off_policy_steps</code> on separate "
        "rollout GPUs the next step's rollout runs beside this step's training: its bar is "
        "only the part training did not hide. The table gives each phase's MFU (model FLOPs "
        "over the phase's own time × the bf16 peak) and MBU (weight and KV bytes it must read "
        "over its time × HBM bandwidth): decode is memory-bound, training compute-bound.</p>",
        figures=figs,
    )


def pipeline_verdict(scenarios: Sequence[Scenario], results: Sequence[Result]) -> str:
    """Stages of one pipeline (SFT → DPO → GRPO): what each step costs and where it goes."""
    parts = [_stage_words(s, r, scenarios[0], results[0]) for s, r in zip(scenarios, results,
                                                                          strict=True)]  # fmt: skip
    text = "Stage by stage: " + "; ".join(parts) + "."
    costs = [r.cost_usd for r in results]
    if all(c is not None for c in costs):
        text += f" All stages: {_money(sum(costs))}."
    return text


def _stage_words(s: Scenario, r: Result, s0: Scenario, r0: Result) -> str:
    text = f"<b>{r.stage.upper()}</b> ({r.gpus} GPUs): {_num(r.step_time_s, '.2f')} s per step"
    if r is not r0 and r.tokens_per_s and r0.tokens_per_s:
        ratio = (r.gpus / r.tokens_per_s) / (r0.gpus / r0.tokens_per_s)
        text += f", {ratio:.1f}× the GPU-time per token of {r0.stage.upper()}"
    if r.cost_usd is not None:
        tokens = getattr(s.workload, "total_tokens", 0) or 0
        text += f"; {tokens / 1e9:.3g} B tokens for {_money(r.cost_usd)}"
    if len(figures.phase_keys([r])) > 1:
        text += f" ({phase_shares(r)})"
    if not r.fits_in_memory:
        text += ", <b>does not fit in memory</b>"
    return text


def comparison_verdict(scenarios: Sequence[Scenario], results: Sequence[Result]) -> str:
    if all(serving.is_serving(r) for r in results):
        return (
            serving.serving_verdict(scenarios, results) + " " + relative_costs(scenarios, results)
        )
    if len({r.stage for r in results}) > 1:
        return pipeline_verdict(scenarios, results)
    pairs = [(s, r) for s, r in zip(scenarios, results, strict=True) if r.fits_in_memory]
    if not pairs:
        return "None of these configurations fits in GPU memory."
    costed = [(s, r) for s, r in pairs if r.cost_usd is not None]
    if costed:
        cheap = min(costed, key=lambda t: t[1].cost_usd)
        fast = min(costed, key=lambda t: t[1].gpu_hours / t[0].gpus)
        text = (
            f"Cheapest: <b>{cheap[0].name}</b> ({_money(cheap[1].cost_usd)}, "
            f"{cheap[1].gpu_hours / cheap[0].gpus / 24:.1f} days). "
            f"Fastest: <b>{fast[0].name}</b> ({fast[1].gpu_hours / fast[0].gpus / 24:.1f} days, "
            f"{_money(fast[1].cost_usd)})."
        )
    else:
        fast = min(pairs, key=lambda t: t[1].step_time_s or float("inf"))
        text = f"Fastest step: <b>{fast[0].name}</b> ({fast[1].step_time_s:.3f} s)."
    unfit = [s.name for s, r in zip(scenarios, results, strict=True) if not r.fits_in_memory]
    if unfit:
        text += f" Does not fit in memory: {', '.join(unfit)}."
    return text + " " + relative_costs(scenarios, results)


def relative_costs(scenarios: Sequence[Scenario], results: Sequence[Result]) -> str:
    """Each scenario's cost per token and memory relative to the first one, in words."""
    s0, r0 = scenarios[0], results[0]
    if not r0.tokens_per_s:
        return ""
    base_cost = r0.gpus / r0.tokens_per_s  # GPU-seconds per token
    parts = []
    for s, r in zip(scenarios[1:], results[1:], strict=True):
        if not r.tokens_per_s:
            continue
        ratio = (r.gpus / r.tokens_per_s) / base_cost
        token = "output token" if serving.is_serving(r) else "token"
        why = ""
        if not serving.is_serving(r) and r.mfu is not None and r0.mfu is not None:
            why = (
                f", at {_pct(r.mfu)} MFU against {_pct(r0.mfu)} with "
                f"{_pct(_exposed_share(r))} of its step in exposed communication and "
                f"bubbles against {_pct(_exposed_share(r0))}"
            )
        parts.append(
            f"{s.name} needs {ratio:.2f}× the GPU-time per {token} of {s0.name} "
            f"({r.params_active / 1e9:.1f} B active parameters against "
            f"{r0.params_active / 1e9:.1f} B; {r.params_total / 1e9:.1f} B against "
            f"{r0.params_total / 1e9:.1f} B held in memory{why})"
        )
    return ("Relative to the first: " + "; ".join(parts) + ".") if parts else ""


def _exposed_share(r: Result) -> float | None:
    """Share of the step that is not compute: exposed communication, pipeline bubble and
    stage imbalance."""
    step = r.step_time_s or 0.0
    if not step:
        return None
    tb = r.time_breakdown_s
    idle = tb.get("bubble", 0.0) + tb.get("imbalance", 0.0)
    return (tb.get("exposed_comm", 0.0) + idle) / step


STEP_NOTE_SERVING = (
    "<p class='note'>For serving: one decode step at the scenario's mean batch (weights and KV "
    "cache read, tensor-parallel all-reduces, all-to-all, experts fetched from host memory).</p>"
)


def comparison_report(
    scenarios: Sequence[Scenario],
    results: Sequence[Result],
    title: str,
    description: str = "",
    base_dirs: Sequence[Path | None] | None = None,
    sensitivity: bool = True,
    traces: Sequence[Sequence[dict]] | None = None,
) -> Report:
    """``traces``: each scenario's trace events where the caller simulated with a trace
    (``simulate_with_trace``); otherwise the training scenarios are simulated again for them."""
    lead = (description + " " if description else "") + comparison_verdict(scenarios, results)
    rep = Report(f"moesim: {title}", lead)
    table_rows = [
        [s.name, s.model.name, f"{r.params_total / 1e9:.1f} B / {r.params_active / 1e9:.1f} B",
         r.stage, f"{r.gpus}× {s.cluster.gpu.name}"]
        for s, r in zip(scenarios, results, strict=True)
    ]  # fmt: skip
    rep.add(
        Section(
            "What is compared",
            figures=[
                figures.table(
                    ["scenario", "model", "params total / active", "stage", "cluster"],
                    table_rows,
                    "Scenarios",
                )
            ],
        )
    )
    if any(serving.is_serving(r) for r in results):
        rep.add(
            Section(
                "Serving: latency, throughput and cost",
                "<p class='note'>TTFT: time to first token (queueing and prefill); TPOT: time "
                "per output token after the first. Cost per million output tokens at the "
                "scenario's GPU price.</p>",
                figures=[serving.latency_table(scenarios, results)],
            )
        )
    if not all(serving.is_serving(r) for r in results):
        rep.add(Section("Cost and throughput", figures=[cost_table(scenarios, results)]))
    rep.add(
        Section(
            "Where the step time goes",
            STEP_NOTE_SERVING if any(serving.is_serving(r) for r in results) else "",
            figures=[figures.step_breakdown(results)],
        )
    )
    phases = phase_section(results)
    if phases is not None:
        rep.add(phases)
    rep.add(
        Section(
            "Memory per GPU",
            figures=[figures.memory_breakdown(results, [s.cluster.gpu.hbm_GB for s in scenarios])],
        )
    )
    if sensitivity:
        batches = serving.decode_batch_section(scenarios, base_dirs)
        if batches is not None:
            rep.add(batches)
    dirs = list(base_dirs) if base_dirs is not None else [None] * len(scenarios)
    for i, (s, r, d) in enumerate(zip(scenarios, results, dirs, strict=True)):
        if serving.is_serving(r) or len(figures.phase_keys([r])) > 1:
            continue  # serving and post-training pipelines have their own sections above
        events = traces[i] if traces is not None else simulate_with_trace(s, d)[1]
        for section in detail_sections(s, events, d, sensitivity, label=s.name):
            rep.add(section)
    rep.add(
        Section(
            "Assumptions",
            "".join(f"<h3>{s.name}</h3>{_assumptions(s)}" for s in scenarios),
        )
    )
    return rep


def sweep_report(frame: pd.DataFrame, title: str) -> Report:
    params = [c for c in frame.columns if c.startswith("param.")]
    ok = frame[frame["error"].isna()] if "error" in frame else frame
    rep = Report(
        f"moesim sweep: {title}",
        f"{len(frame)} scenarios, {len(ok)} simulated"
        + (f", {len(frame) - len(ok)} could not be built (see the table)." if len(ok) < len(frame)
           else "."),
    )  # fmt: skip
    metric = "step_time_s" if "step_time_s" in ok else None
    figs = []
    if metric and params:
        x = params[0]
        groups = ok.groupby(params[1:], dropna=False) if len(params) > 1 else [("all", ok)]
        ys = {
            (", ".join(map(str, k)) if isinstance(k, tuple) else str(k)): g.sort_values(x)[
                metric
            ].tolist()
            for k, g in groups
        }
        xs = sorted(ok[x].unique().tolist(), key=str)
        figs.append(figures.curve(xs, ys, f"{metric} vs {x[6:]}", x[6:], "seconds"))
        if "mfu" in ok:
            ys = {
                (", ".join(map(str, k)) if isinstance(k, tuple) else str(k)): g.sort_values(x)[
                    "mfu"
                ].tolist()
                for k, g in groups
            }
            figs.append(figures.curve(xs, ys, f"MFU vs {x[6:]}", x[6:], "MFU"))
    cols = [*params, *(c for c in ("step_time_s", "mfu", "fits_in_memory", "cost_usd", "error")
                       if c in frame)]  # fmt: skip
    rows = frame[cols].astype(object).where(frame[cols].notna(), "").values.tolist()
    figs.append(figures.table(cols, rows[:500], "Results (first 500 rows)"))
    rep.add(Section("Results", figures=figs))
    return rep


def plan_report(plan: Any, base_dir: Path | None = None) -> Report:
    if plan.serving:
        return serving.serving_plan_report(plan, base_dir)
    d = plan.to_json_dict()
    best = d["best"]
    lead = (
        f"{d['considered']} layouts considered, {d['fit_in_memory']} fit in memory, "
        f"{d['simulated']} simulated; "
    )
    if best:
        b = best[0]
        lead += (
            f"the best by {d['objective']} is <b>{b['name']}</b>: {b['gpus']} GPUs, "
            f"{_num(b['run_days'], '.1f')} days, {_money(b['run_cost_usd'])}."
        )
    else:
        lead += "none meets the constraints."
    rep = Report(f"moesim plan: {d['name']}", lead)
    cols = ["name", "gpus", "tp", "pp", "dp", "ep", "zero_stage", "microbatch_size", "recompute",
            "memory_GB", "step_time_s", "mfu", "run_days", "run_cost_usd"]  # fmt: skip
    if best and "goodput" in best[0]:  # reliability: goodput beside throughput
        cols[-2:-2] = ["tokens_per_s", "goodput", "effective_tokens_per_s",
                       "checkpoint_interval_s", "interruptions"]  # fmt: skip
        b = best[0]
        rep.lead += (
            f" With failures, checkpoints and restarts its goodput is {b['goodput']:.1%} "
            f"(checkpoint every {_num(b['checkpoint_interval_s'], '.0f')} s, "
            f"{_num(b['interruptions'], '.0f')} interruptions over the run); run days and cost "
            "count them."
        )
    rows = [[_fmt_cell(b.get(c)) for c in cols] for b in best]
    rep.add(Section("Best configurations", figures=[figures.table(cols, rows, "Best")]))
    points = [c.row() for c in plan.simulated if c.run_days is not None]
    front = [c.row() for c in plan.pareto if c.run_days is not None]
    if points:
        rep.add(Section("Pareto front", figures=[figures.pareto(points, front)]))
    return rep


def _fmt_cell(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return v
