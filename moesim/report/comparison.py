"""The report comparing scenarios (dense vs MoE, one cluster vs another, the stages of a
post-training pipeline): what is compared, cost and throughput, where the step time goes, memory,
and each training scenario's timeline and traffic (``moesim.report.scenario``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from moesim.report import figures, serving
from moesim.report.common import money as _money
from moesim.report.common import num as _num
from moesim.report.common import pct as _pct
from moesim.report.html import Report, Section
from moesim.report.scenario import (
    assumptions_html,
    cost_table,
    detail_sections,
    phase_section,
    phase_shares,
    simulate_with_trace,
)
from moesim.specs import Result, Scenario


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
            "".join(f"<h3>{s.name}</h3>{assumptions_html(s)}" for s in scenarios),
        )
    )
    return rep
