"""The report of a serving plan (``moesim plan`` with ``workload.stage: inference``): the
cheapest layouts that meet the p99 SLOs, why the others were rejected, latency against cost,
and the chosen layout's headroom as the request rate grows (``serving.load_curve``).

Reads the plan's rows (``PlanResult.to_json_dict``: ``moesim.plan_result``) and the serving
curves of ``moesim.report.serving``; a training plan's report is
``moesim.report.sweep_plan.plan_report``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from moesim.report import figures
from moesim.report.common import money, ms, num
from moesim.report.html import Report, Section
from moesim.report.serving import load_curve, load_figures
from moesim.specs import InferenceWorkload


def _slo_words(constraints: dict[str, Any]) -> str:
    parts = [f"p99 {label} ≤ {ms(constraints[key])}"
             for key, label in (("ttft_p99_s", "TTFT"), ("tpot_p99_s", "TPOT"))
             if constraints.get(key) is not None]  # fmt: skip
    return " and ".join(parts) or "no latency SLO"


def serving_plan_lead(plan: Any) -> str:
    d = plan.to_json_dict()
    some = (plan.best or plan.simulated or [None])[0]
    rate = getattr(some.scenario.workload, "arrival_rate_per_s", None) if some else None
    load = f"{rate:g} requests/s (Poisson)" if rate else "the workload's static batch"
    lead = (
        f"Serving {load} under {_slo_words(d['constraints'])}: {d['considered']} layouts "
        f"considered, {d['fit_in_memory']} fit in memory, {d['simulated']} simulated. "
    )
    if d["best"]:
        b = d["best"][0]
        lead += (
            f"The cheapest that meets the SLOs is <b>{_layout_cell(b)}</b> "
            f"({b.get('replicas')} replicas): {money(b['usd_per_hour'])} per hour, "
            f"${num(b['cost_per_million_tokens_usd'], ',.2f')} per million output tokens, "
            f"p99 TTFT {ms(b['ttft_s_p99'])}, p99 TPOT {ms(b['tpot_s_p99'])}."
        )
    else:
        lead += "<b>No layout meets the SLOs</b>."
    miss = closest_cheaper_miss(d)
    if miss is not None:
        lead += (
            f" The closest {'cheaper ' if d['best'] else ''}layout, {_layout_cell(miss)} "
            f"({money(miss['usd_per_hour'])} per hour), misses: {html.escape(miss['why_not'])}."
        )
    return lead


def closest_cheaper_miss(d: dict[str, Any]) -> dict[str, Any] | None:
    """Of the rejected layouts cheaper than the best (all of them when none meets the SLOs),
    the most expensive one, and of those the one that misses its SLOs by the least."""
    limit = d["best"][0]["usd_per_hour"] if d["best"] else float("inf")
    cheaper = [r for r in d["rejected"] if (r.get("usd_per_hour") or 0) < limit]
    if not cheaper:
        return None
    return min(cheaper, key=lambda r: (-r["usd_per_hour"], _miss_ratio(r, d["constraints"])))


def _miss_ratio(r: dict[str, Any], constraints: dict[str, Any]) -> float:
    """How far over its worst SLO a layout is (1.1: 10% over); inf without a measurement."""
    ratios = [
        (r.get(got) or float("inf")) / constraints[slo]
        for got, slo in (("ttft_s_p99", "ttft_p99_s"), ("tpot_s_p99", "tpot_p99_s"))
        if constraints.get(slo)
    ]
    return max(ratios, default=0.0)


def _layout_cell(b: dict[str, Any]) -> str:
    budget = ""
    if b.get("engine_searched"):
        budget = f" · {b['max_num_seqs']} seqs · {b['max_num_batched_tokens']} tok/step"
    if b.get("num_speculative_tokens"):
        budget += f" · k {b['num_speculative_tokens']}"
    if b.get("disaggregated"):  # a prefill and a decode pool
        from moesim.plan_pd import pd_layout_text

        return f"{b['gpus']} GPUs: {pd_layout_text(b)}{budget}"
    etp = f" · etp {b['etp']}" if b.get("etp") else ""
    pp = f" · pp {b['pp']}" if b["pp"] > 1 else ""
    return f"{b['gpus']} GPUs: tp {b['tp']}{pp} · ep {b['ep']}{etp}{budget}"


def best_table(rows: Sequence[dict[str, Any]]) -> go.Figure:
    header = ["layout", "replicas", "concurrency per replica", "memory/GPU (GB)", "TTFT p99",
              "TPOT p99", "output tokens/s", "$ per hour", "$ per M output tokens"]  # fmt: skip
    cells = [
        [_layout_cell(b), b.get("replicas"), b.get("concurrency_limit"),
         num(b["memory_GB"], ".1f"), ms(b["ttft_s_p99"]), ms(b["tpot_s_p99"]),
         num(b["output_tokens_per_s"]), money(b["usd_per_hour"]),
         num(b["cost_per_million_tokens_usd"], ",.2f")]
        for b in rows
    ]  # fmt: skip
    return figures.table(header, cells, "Best")


def rejected_table(rows: Sequence[dict[str, Any]]) -> go.Figure:
    header = ["layout", "TTFT p99", "TPOT p99", "$ per hour", "why not"]
    cells = [
        [_layout_cell(r), ms(r.get("ttft_s_p99")), ms(r.get("tpot_s_p99")),
         money(r.get("usd_per_hour")), r["why_not"]]
        for r in rows
    ]  # fmt: skip
    fig = figures.table(header, cells, "Rejected (cheapest first)")
    fig.data[0].columnwidth = [2, 1, 1, 1, 3]
    return fig


def serving_plan_report(plan: Any, base_dir: Path | None = None) -> Report:
    d = plan.to_json_dict()
    rep = Report(f"moesim plan: {d['name']}", serving_plan_lead(plan))
    rep.add(
        Section(
            "Cheapest layouts that meet the SLOs",
            "<p class='note'>Ranked by dollars per hour, then p99 time per output token. "
            "Concurrency is the continuous-batching limit per replica (fewer when the KV cache "
            "is full); memory is per GPU at that concurrency.</p>",
            figures=[best_table(d["best"])],
        )
    )
    if d["rejected"]:
        rep.add(Section("Why the others were rejected", figures=[rejected_table(d["rejected"])]))
    points = [c.row() for c in plan.simulated if c.meets]
    front = [c.row() for c in plan.pareto]
    missed = [c.row() for c in plan.simulated if not c.meets]
    if points or missed:
        rep.add(
            Section(
                "Latency against cost",
                figures=[figures.serving_pareto(points, front, missed)],
            )
        )
    if plan.best:
        best = plan.best[0].scenario
        w = best.workload
        if isinstance(w, InferenceWorkload) and w.arrival_rate_per_s is not None:
            rates, results = load_curve(best, base_dir)
            rep.add(
                Section(
                    f"Headroom of {best.name}",
                    "<p class='note'>The chosen layout simulated at ¼× to 2× the planned "
                    "request rate: where the queue (p99 TTFT) takes off is how much traffic "
                    "growth it absorbs before the SLO breaks.</p>",
                    figures=load_figures(
                        rates,
                        results,
                        d["constraints"].get("ttft_p99_s"),
                        d["constraints"].get("tpot_p99_s"),
                    ),
                )
            )
    return rep
