"""Capacity planning: search cluster sizes and parallel layouts for the cheapest or fastest
configuration that fits in memory and meets a deadline, a budget or serving SLOs.

The search prunes with the analytic layer first (a layout that cannot be built or does not fit
is dropped without simulating it), ranks the survivors by an analytic lower bound on step time,
and simulates the most promising ones. The answer is the best configurations and the Pareto
front of run time against cost.

A plan file::

    name: mixtral-pretrain-plan
    model: mixtral-8x7b
    gpu: h100-sxm
    workload: {stage: pretrain, seq_len: 4096, global_batch: 1024, total_tokens: 1.0e12}
    cost: {usd_per_gpu_hour: 2.0}
    search:                      # every key optional; defaults cover the usual choices
      nodes: [16, 32, 64]
      tp: [1, 2, 4, 8]
      pp: [1, 2, 4, 8]
      ep: [1, 2, 4, 8]
      zero_stage: [1]
      microbatch_size: [1, 2]
      recompute: [selective, full]
    constraints: {deadline_days: 30, budget_usd: 5.0e6, max_gpus: 1024}
    objective: cost              # or time
    top: 10                      # configurations reported
    simulate_max: 64             # survivors simulated (best analytic bound first)

For serving (``workload.stage: inference`` with ``arrival_rate_per_s``), constraints take
``ttft_p99_s`` and ``tpot_p99_s``; the request rate is split over data-parallel replicas.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from moesim.analytic.flops import token_flops
from moesim.analytic.memory import memory_per_gpu, n_microbatches, sequences_per_step
from moesim.scenario_io import (
    ScenarioError,
    format_validation_error,
    load_yaml,
    resolve_ids,
    scenario_from_dict,
)
from moesim.specs import InferenceWorkload, Result, Scenario, Spec

SECONDS_PER_DAY = 86_400.0


class SearchSpace(Spec):
    nodes: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    tp: list[int] = Field(default_factory=lambda: [1, 2, 4, 8])
    pp: list[int] = Field(default_factory=lambda: [1, 2, 4, 8])
    cp: list[int] = Field(default_factory=lambda: [1])
    ep: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    zero_stage: list[int] = Field(default_factory=lambda: [1])
    microbatch_size: list[int] = Field(default_factory=lambda: [1, 2])
    recompute: list[str] = Field(default_factory=lambda: ["selective", "full"])
    schedule: list[str] = Field(default_factory=lambda: ["1f1b"])


class Constraints(Spec):
    deadline_days: float | None = Field(None, gt=0, description="the run must finish in time")
    budget_usd: float | None = Field(None, gt=0)
    max_gpus: int | None = Field(None, gt=0)
    ttft_p99_s: float | None = Field(None, gt=0, description="serving SLO")
    tpot_p99_s: float | None = Field(None, gt=0, description="serving SLO")


@dataclass
class Candidate:
    scenario: Scenario
    memory_GB: float
    bound_step_s: float  # analytic lower bound (compute at peak, with the pipeline bubble)
    result: Result | None = None
    run_days: float | None = None
    run_cost_usd: float | None = None
    meets: bool = True
    why_not: list[str] = field(default_factory=list)

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
            "memory_GB": self.memory_GB,
            "step_time_s": r.step_time_s if r else None,
            "mfu": r.mfu if r else None,
            "run_days": self.run_days,
            "run_cost_usd": self.run_cost_usd,
            "meets_constraints": self.meets,
            "why_not": "; ".join(self.why_not),
        }
        if r is not None and r.ttft_s_p99 is not None:
            out |= {"ttft_s_p99": r.ttft_s_p99, "tpot_s_p99": r.tpot_s_p99}
        return out


@dataclass
class PlanResult:
    name: str
    objective: str
    considered: int
    fitting: int
    simulated: list[Candidate]
    best: list[Candidate]
    pareto: list[Candidate]

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "objective": self.objective,
            "considered": self.considered,
            "fit_in_memory": self.fitting,
            "simulated": len(self.simulated),
            "best": [c.row() for c in self.best],
            "pareto": [c.row() for c in self.pareto],
        }


@dataclass(frozen=True)
class PlanSpec:
    name: str
    base: dict[str, Any]  # scenario dict without cluster size and parallel layout
    search: SearchSpace
    constraints: Constraints
    objective: str
    top: int
    simulate_max: int
    base_dir: Path | None


def load_plan(path: str | Path) -> PlanSpec:
    path = Path(path)
    data, lines = load_yaml(path)
    return plan_from_dict(data, path.parent, str(path), lines)


def plan_from_dict(
    data: dict[str, Any], base_dir: Path | None = None, source: str = "", lines: dict | None = None
) -> PlanSpec:
    known = {"name", "description", "model", "gpu", "gpus_per_node", "workload", "cost"}
    known |= {"search", "constraints", "objective", "top", "simulate_max", "precision", "routing"}
    known |= {"simulation", "intra_node", "inter_node"}
    unknown = set(data) - known
    where = f"{source}: " if source else ""
    if unknown:
        raise ScenarioError(f"{where}unknown plan keys {sorted(unknown)}: allowed {sorted(known)}")
    for key in ("model", "gpu", "workload"):
        if key not in data:
            raise ScenarioError(f"{where}{key}: required and missing: add it")
    try:
        search = SearchSpace.model_validate(data.get("search") or {})
        constraints = Constraints.model_validate(data.get("constraints") or {})
    except ValidationError as e:
        raise ScenarioError(format_validation_error(e, source, lines)) from None
    objective = data.get("objective", "cost")
    if objective not in ("cost", "time"):
        raise ScenarioError(f"{where}objective: '{objective}' is not cost or time")
    cluster = {"gpu": data["gpu"]}
    for key in ("gpus_per_node", "intra_node", "inter_node"):
        if key in data:
            cluster[key] = data[key]
    base = {
        "name": data.get("name", "plan"),
        "model": data["model"],
        "cluster": cluster,
        "workload": data["workload"],
    }
    for key in ("cost", "precision", "routing", "simulation"):
        if key in data:
            base[key] = data[key]
    base = resolve_ids(base, base_dir)
    return PlanSpec(
        name=data.get("name", "plan"),
        base=base,
        search=search,
        constraints=constraints,
        objective=objective,
        top=int(data.get("top", 10)),
        simulate_max=int(data.get("simulate_max", 64)),
        base_dir=base_dir,
    )


# -- the search -----------------------------------------------------------------------------
def candidates(spec: PlanSpec) -> tuple[int, list[Scenario]]:
    """Every buildable scenario of the search space (and how many points were considered)."""
    sp, considered, out = spec.search, 0, []
    model = spec.base["model"]
    moe = model.get("moe") is not None
    inference = spec.base["workload"].get("stage") == "inference"
    ep_values = sp.ep if moe else [1]
    zero_values = [0] if inference else sp.zero_stage
    recompute_values = ["none"] if inference else sp.recompute
    axes = itertools.product(
        sp.nodes, sp.tp, sp.pp, sp.cp, ep_values, zero_values, sp.microbatch_size,
        recompute_values, sp.schedule,
    )  # fmt: skip
    for nodes, tp, pp, cp, ep, zero, mbs, rc, sched in axes:
        considered += 1
        gpn = spec.base["cluster"].get("gpus_per_node") or spec.base["cluster"]["gpu"].get(
            "gpus_per_node", 8
        )
        if spec.constraints.max_gpus and nodes * gpn > spec.constraints.max_gpus:
            continue
        if tp > gpn:  # TP stays inside a node
            continue
        d = dict(spec.base)
        d["cluster"] = {**spec.base["cluster"], "nodes": nodes}
        d["parallel"] = {
            "tp": tp, "pp": pp, "cp": cp, "ep": ep, "zero_stage": zero, "microbatch_size": mbs,
            "recompute": rc, "schedule": sched,
        }  # fmt: skip
        d["name"] = f"{spec.name}[n{nodes} tp{tp} pp{pp} ep{ep} z{zero} mb{mbs} {rc}]"
        try:
            out.append(scenario_from_dict(d, base=spec.base_dir))
        except ScenarioError:
            continue
    return considered, out


def step_time_lower_bound_s(s: Scenario) -> float:
    """Compute at the GPU's dense peak, stretched by the 1F1B bubble: no simulation needed."""
    w, p = s.workload, s.parallel
    peak = s.cluster.gpu.peak_TFLOPS(s.precision.compute) * 1e12
    if isinstance(w, InferenceWorkload):
        return 0.0
    tokens = sequences_per_step(s) * w.seq_len
    flops = token_flops(s.model, w.seq_len).hardware_flops(p.recompute) * tokens
    m = n_microbatches(s)
    bubble = 1 + (p.pp - 1) / m
    return flops / (s.gpus * peak) * bubble


def run_plan(
    spec: PlanSpec,
    simulate: Callable[[Scenario], Result] | None = None,
    progress: Callable[[int], None] | None = None,
) -> PlanResult:
    if simulate is None:
        from moesim.sim.run import simulate as _simulate

        simulate = _simulate
    considered, scenarios = candidates(spec)
    fitting: list[Candidate] = []
    for s in scenarios:
        mem = memory_per_gpu(s)
        if mem.total > s.cluster.gpu.hbm_GB * 1e9:
            continue
        fitting.append(Candidate(s, mem.total / 1e9, step_time_lower_bound_s(s)))
    # Most promising first: by the analytic bound on run cost (or time) for the objective.
    fitting.sort(key=lambda c: _objective(c.bound_step_s, c.scenario, spec.objective))
    chosen = fitting[: spec.simulate_max]
    for c in chosen:
        c.result = simulate(c.scenario)
        _judge(c, spec.constraints)
        if progress:
            progress(1)
    done = [c for c in chosen if c.result is not None]
    meeting = [c for c in done if c.meets]
    meeting.sort(key=lambda c: _rank_key(c, spec.objective))
    return PlanResult(
        name=spec.name,
        objective=spec.objective,
        considered=considered,
        fitting=len(fitting),
        simulated=done,
        best=meeting[: spec.top],
        pareto=pareto_front(meeting),
    )


def _objective(step_s: float, s: Scenario, objective: str) -> float:
    return step_s * (s.gpus if objective == "cost" else 1)


def _rank_key(c: Candidate, objective: str) -> tuple[float, float]:
    time = c.run_days if c.run_days is not None else (c.result.step_time_s or math.inf)
    cost = c.run_cost_usd if c.run_cost_usd is not None else time * c.scenario.gpus
    return (cost, time) if objective == "cost" else (time, cost)


def _judge(c: Candidate, k: Constraints) -> None:
    """Fill run time and cost, and say which constraints a simulated candidate misses."""
    r, s = c.result, c.scenario
    assert r is not None
    if r.fits_in_memory is False:
        c.why_not.append("does not fit in memory")
    total = getattr(s.workload, "total_tokens", None)
    if r.step_time_s and total and r.tokens_per_s:
        seconds = total / r.tokens_per_s
        c.run_days = seconds / SECONDS_PER_DAY
        c.run_cost_usd = seconds / 3600 * s.gpus * s.cost.usd_per_gpu_hour
    elif r.output_tokens_per_s:
        c.run_cost_usd = s.gpus * s.cost.usd_per_gpu_hour  # per hour of serving
    if k.deadline_days and c.run_days and c.run_days > k.deadline_days:
        c.why_not.append(f"takes {c.run_days:.1f} days > {k.deadline_days:g}")
    if k.budget_usd and c.run_cost_usd and c.run_cost_usd > k.budget_usd:
        c.why_not.append(f"costs ${c.run_cost_usd:,.0f} > ${k.budget_usd:,.0f}")
    if k.ttft_p99_s and (r.ttft_s_p99 or math.inf) > k.ttft_p99_s:
        c.why_not.append(f"p99 TTFT {r.ttft_s_p99} s > {k.ttft_p99_s:g}")
    if k.tpot_p99_s and (r.tpot_s_p99 or math.inf) > k.tpot_p99_s:
        c.why_not.append(f"p99 TPOT {r.tpot_s_p99} s > {k.tpot_p99_s:g}")
    c.meets = not c.why_not


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both run time and cost, fastest first."""
    pts = [
        (c.run_days if c.run_days is not None else (c.result.step_time_s or math.inf),
         c.run_cost_usd if c.run_cost_usd is not None else math.inf, c)
        for c in candidates if c.result is not None
    ]  # fmt: skip
    pts.sort(key=lambda t: (t[0], t[1]))
    front, best_cost = [], math.inf
    for _time, cost, c in pts:
        if cost < best_cost:
            front.append(c)
            best_cost = cost
    return front
