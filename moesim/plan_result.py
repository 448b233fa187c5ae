"""The rows of a capacity plan: a candidate layout (its scenario, lower bounds, simulated result,
run time and cost, the constraints it misses) and the plan's answer (the best, the Pareto front
of run time against cost, the rejected), as the CLI tables, the JSON output and the reports read
them. Kept apart from the search (``moesim.plan``) so that what a plan reports can be read and
tested without the search that fills it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from moesim.plan_pd import pool_rows
from moesim.specs import Result, Scenario


@dataclass
class Candidate:
    scenario: Scenario
    memory_GB: float
    bound_step_s: float  # analytic lower bound (compute at the best efficiency, with bubble)
    result: Result | None = None
    run_days: float | None = None
    run_cost_usd: float | None = None
    usd_per_hour: float | None = None  # serving: what the layout costs while it serves
    meets: bool = True
    why_not: list[str] = field(default_factory=list)
    bound_run_days: float | None = None  # lower bounds of run_days, run_cost_usd, p99 TPOT
    bound_run_cost_usd: float | None = None
    bound_tpot_s: float | None = None
    goodput: float | None = None  # with reliability: analytic, independent of the step time
    engine_searched: bool = False  # serving: the plan searched max_num_seqs or the token budget

    def row(self) -> dict[str, Any]:
        s, p = self.scenario, self.scenario.parallel
        r = self.result
        out = {
            "name": s.name,
            "gpus": s.gpus,
            "nodes": s.cluster.nodes,
            "tp": p.tp,
            "pp": p.pp,
            "dp": p.dp,
            "ep": p.ep,
            "zero_stage": p.zero_stage,
            "microbatch_size": p.microbatch_size,
            "recompute": p.recompute,
            "memory_GB": r.memory_per_gpu_GB.get("total", self.memory_GB) if r else self.memory_GB,
            "step_time_s": r.step_time_s if r else None,
            "mfu": r.mfu if r else None,
            "run_days": self.run_days,
            "run_cost_usd": self.run_cost_usd,
            "meets_constraints": self.meets,
            "why_not": "; ".join(self.why_not),
        }
        if p.etp > 1:
            out["etp"] = p.etp
        if getattr(s.workload, "disaggregated", None) is not None:
            out |= pool_rows(s, r)
        if p.cp > 1:
            out["cp"] = p.cp
        if s.reliability is not None:  # failures over the run: goodput beside throughput
            rel = (r.reliability or {}) if r else {}
            out |= {
                "tokens_per_s": r.tokens_per_s if r else None,
                "goodput": r.goodput if r else self.goodput,
                "effective_tokens_per_s": r.effective_tokens_per_s if r else None,
                "checkpoint_interval_s": rel.get("checkpoint_interval_s"),
                "interruptions": rel.get("interruptions"),
            }
        if r is not None and r.stage == "inference":
            out |= {
                "ttft_s_p99": r.ttft_s_p99,
                "tpot_s_p99": r.tpot_s_p99,
                "replicas": getattr(r, "replicas", None),
                "concurrency_limit": getattr(r, "concurrency_limit", None),
                "max_num_seqs": getattr(s.workload, "max_batch_size", None),
                "max_num_batched_tokens": getattr(s.workload, "max_prefill_tokens", None),
                "engine_searched": self.engine_searched,
                "output_tokens_per_s": r.output_tokens_per_s,
                "usd_per_hour": self.usd_per_hour,
                "cost_per_million_tokens_usd": getattr(r, "cost_per_million_tokens_usd", None),
            }
            if _drafts(s) is not None:
                out["num_speculative_tokens"] = _drafts(s)
        return out

    @property
    def serving(self) -> bool:
        return self.result is not None and self.result.stage == "inference"


@dataclass
class PlanResult:
    name: str
    objective: str
    considered: int
    fitting: int
    simulated: list[Candidate]
    best: list[Candidate]
    pareto: list[Candidate]
    rejected: list[Candidate] = field(default_factory=list)  # cheapest misses, with why_not
    serving: bool = False
    constraints: dict[str, float] = field(default_factory=dict)
    buildable: int = 0
    pruned: int = 0  # fitting layouts whose lower bound already misses a constraint
    pruned_by: dict[str, int] = field(default_factory=dict)  # constraint -> layouts it pruned
    not_simulated: int = 0  # survivors beyond simulate_max

    def summary(self) -> str:
        """One line: how the search narrowed down, and why."""
        why = ", ".join(f"{k}: {v}" for k, v in self.pruned_by.items() if v)
        return (
            f"{self.considered} layouts considered, {self.buildable} buildable, "
            f"{self.fitting} fit in memory, {self.pruned} pruned by a lower bound"
            + (f" ({why})" if why else "")
            + f", {len(self.simulated)} simulated"
            + (f" ({self.not_simulated} more left unsimulated)" if self.not_simulated else "")
        )

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "objective": self.objective,
            "serving": self.serving,
            "constraints": self.constraints,
            "considered": self.considered,
            "buildable": self.buildable,
            "fit_in_memory": self.fitting,
            "pruned_by_bound": self.pruned,
            "pruned_by": self.pruned_by,
            "not_simulated": self.not_simulated,
            "summary": self.summary(),
            "simulated": len(self.simulated),
            "best": [c.row() for c in self.best],
            "pareto": [c.row() for c in self.pareto],
            "rejected": [c.row() for c in self.rejected],
        }


def _drafts(s: Scenario) -> int | None:
    """Drafts per step of a serving candidate (None without speculative decoding)."""
    sp = getattr(s.workload, "speculative", None)
    return sp.num_speculative_tokens if sp is not None else None


def cost_and_time(c: Candidate) -> tuple[float, float]:
    """What a candidate costs and how long it takes, in the units its plan ranks by: a run's
    dollars and days; a serving layout's dollars per hour and p99 seconds per output token."""
    r = c.result
    assert r is not None
    if c.serving:
        return (c.usd_per_hour or math.inf, r.tpot_s_p99 or math.inf)
    time = c.run_days if c.run_days is not None else (r.step_time_s or math.inf)
    gpus = c.scenario.gpus if c.scenario is not None else 1
    cost = c.run_cost_usd if c.run_cost_usd is not None else time * gpus
    return cost, time


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both time and cost (see ``cost_and_time``), fastest first."""
    pts = [(*cost_and_time(c)[::-1], c) for c in candidates if c.result is not None]
    pts.sort(key=lambda t: (t[0], t[1]))
    front, best_cost = [], math.inf
    for _time, cost, c in pts:
        if cost < best_cost:
            front.append(c)
            best_cost = cost
    return front
