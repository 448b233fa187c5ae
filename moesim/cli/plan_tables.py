"""The terminal tables of ``moesim plan``: the best training layouts (step time, MFU, run days
and cost, goodput where reliability is given) or the best serving configurations (latency
percentiles against the SLOs, throughput, cost per million tokens; both pools when
disaggregated)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from moesim.cli.app import (
    console,
)
from moesim.cli.cells import fmt, ms


def print_plan(d: dict[str, Any]) -> None:
    console.print(escape(f"{d['summary']}; objective: {d['objective']}"), highlight=False)
    table = _serving_plan_table if d["serving"] else _training_plan_table
    if d["best"]:
        console.print(table(d["best"], escape(f"best configurations: {d['name']}")))
        b = d["best"][0]
        if b.get("goodput") is not None:  # reliability: what the days and cost count
            console.print(
                f"days and cost count failures, checkpoints and restarts: the best checkpoints "
                f"every {fmt(b['checkpoint_interval_s'], ',.0f')} s and expects "
                f"{fmt(b['interruptions'], ',.0f')} interruptions over the run",
                highlight=False,
            )
        return
    console.print("[red]no configuration meets the constraints[/]")
    if d["rejected"]:
        t = table(d["rejected"], "cheapest rejected, and why")
        console.print(t)


def _training_plan_table(rows: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title)
    t.add_column("GPUs", justify="right", no_wrap=True)
    t.add_column("layout", overflow="fold", ratio=1)
    goodput = any("goodput" in b for b in rows)  # reliability: goodput beside throughput
    cols = ("mem GB", "step s", "MFU", *(("goodput",) if goodput else ()), "days", "cost $")
    for col in cols:
        t.add_column(col, justify="right", no_wrap=True)
    with_why = any(b["why_not"] for b in rows)
    if with_why:
        t.add_column("why not", overflow="fold")
    for b in rows:
        cp = f" cp{b['cp']}" if b.get("cp") else ""
        layout = (
            f"tp{b['tp']}{cp} pp{b['pp']} dp{b['dp']} ep{b['ep']} z{b['zero_stage']} "
            f"mb{b['microbatch_size']} {b['recompute']}"
        )
        extra = []
        if goodput:
            g = b.get("goodput")
            extra = [fmt(g and 100 * g, ".1f") + "%"]
        cells = [
            str(b["gpus"]), layout, fmt(b["memory_GB"], ".1f"), fmt(b["step_time_s"], ".3f"),
            fmt(b["mfu"] and 100 * b["mfu"], ".1f") + "%", *extra, fmt(b["run_days"], ".1f"),
            fmt(b["run_cost_usd"], ",.0f"),
        ]  # fmt: skip
        t.add_row(*cells, *([b["why_not"]] if with_why else []))
    return t


def _serving_plan_table(rows: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title)
    t.add_column("GPUs", justify="right", no_wrap=True)
    t.add_column("layout ×replicas", overflow="fold", ratio=1)
    for col in ("TTFT p99 ms", "TPOT p99 ms", "$/hour", "$/M out tok"):
        t.add_column(col, justify="right", no_wrap=True)
    with_why = any(b["why_not"] for b in rows)
    if with_why:
        t.add_column("why not", overflow="fold")
    for b in rows:
        etp = f" etp{b['etp']}" if b.get("etp") else ""
        layout = f"tp{b['tp']} pp{b['pp']} ep{b['ep']}{etp} ×{b.get('replicas')}"
        if b.get("disaggregated"):  # its pools' layouts
            from moesim.plan_pd import pd_layout_text

            layout = pd_layout_text(b)
        if b.get("engine_searched"):
            layout += f" {b['max_num_seqs']} seqs {b['max_num_batched_tokens']} tok/step"
        if b.get("num_speculative_tokens"):
            layout += f" k{b['num_speculative_tokens']}"
        cells = [
            str(b["gpus"]), layout, ms(b.get("ttft_s_p99")), ms(b.get("tpot_s_p99")),
            fmt(b.get("usd_per_hour"), ",.0f"), fmt(b.get("cost_per_million_tokens_usd"), ",.2f"),
        ]  # fmt: skip
        t.add_row(*cells, *([b["why_not"]] if with_why else []))
    return t
