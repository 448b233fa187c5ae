"""The reports of a sweep (step time and MFU along the first swept parameter, a table of every
point) and of a training plan (the best layouts, goodput where reliability is given, the Pareto
front); a serving plan's report is ``moesim.report.serving_plan.serving_plan_report``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from moesim.report import figures, serving_plan
from moesim.report.common import money as _money
from moesim.report.common import num as _num
from moesim.report.html import Report, Section


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
        return serving_plan.serving_plan_report(plan, base_dir)
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
