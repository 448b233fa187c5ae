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
``search.gpus`` (total GPUs, e.g. ``[1, 2, 4, 8, 16]``) replaces ``nodes`` where a deployment
may be a slice of a node, and ``search.etp`` shards experts over tensor ranks as vLLM does. A
serving layout's cost is its price per hour (``usd_per_hour``, and ``cost_per_million_tokens_usd``
at the offered rate); ``objective: time`` minimises p99 TPOT instead.
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
    etp: list[int] = Field(default_factory=lambda: [1])
    gpus: list[int] | None = Field(
        None, description="total GPUs (replaces nodes): a slice of a node when below its size"
    )
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
    usd_per_hour: float | None = None  # serving: what the layout costs while it serves
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
        if r is not None and r.stage == "inference":
            out |= {
                "ttft_s_p99": r.ttft_s_p99,
                "tpot_s_p99": r.tpot_s_p99,
                "replicas": getattr(r, "replicas", None),
                "concurrency_limit": getattr(r, "concurrency_limit", None),
                "output_tokens_per_s": r.output_tokens_per_s,
                "usd_per_hour": self.usd_per_hour,
                "cost_per_million_tokens_usd": getattr(r, "cost_per_million_tokens_usd", None),
            }
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

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "objective": self.objective,
            "serving": self.serving,
            "constraints": self.constraints,
            "considered": self.considered,
            "fit_in_memory": self.fitting,
            "simulated": len(self.simulated),
            "best": [c.row() for c in self.best],
            "pareto": [c.row() for c in self.pareto],
            "rejected": [c.row() for c in self.rejected],
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

    @property
    def serving(self) -> bool:
        return self.base["workload"].get("stage") == "inference"


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
    stage = data["workload"].get("stage") if isinstance(data["workload"], dict) else None
    slos = [k for k in ("ttft_p99_s", "tpot_p99_s") if getattr(constraints, k) is not None]
    if slos and stage != "inference":
        raise ScenarioError(
            f"{where}constraints.{slos[0]}: a serving SLO needs workload.stage: inference "
            f"(this plan's stage is {stage})"
        )
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
    gpn = _gpus_per_node(base)
    for g in search.gpus or []:
        if g > gpn and g % gpn:
            raise ScenarioError(
                f"{where}search.gpus: {g} is neither a slice of one {gpn}-GPU node nor whole "
                f"nodes: use at most {gpn} or a multiple of {gpn}"
            )
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
def _gpus_per_node(base: dict[str, Any]) -> int:
    return base["cluster"].get("gpus_per_node") or base["cluster"]["gpu"].get("gpus_per_node", 8)


def cluster_sizes(spec: PlanSpec) -> list[tuple[int, int]]:
    """(nodes, GPUs per node) of every cluster size searched: ``search.gpus`` as slices of a
    node (or whole nodes beyond one), else ``search.nodes`` full nodes."""
    gpn = _gpus_per_node(spec.base)
    if spec.search.gpus is None:
        return [(n, gpn) for n in spec.search.nodes]
    return [(1, g) if g <= gpn else (g // gpn, gpn) for g in spec.search.gpus]


def candidates(spec: PlanSpec) -> tuple[int, list[Scenario]]:
    """Every buildable scenario of the search space (and how many points were considered)."""
    sp, considered, out = spec.search, 0, []
    moe = spec.base["model"].get("moe") is not None
    serving = spec.serving
    axes = itertools.product(
        cluster_sizes(spec), sp.tp, sp.pp, sp.cp,
        sp.ep if moe else [1], sp.etp if moe else [1],
        [0] if serving else sp.zero_stage,  # nothing to shard without optimizer states
        sp.microbatch_size[:1] if serving else sp.microbatch_size,  # the server sets batches
        ["none"] if serving else sp.recompute,
        sp.schedule[:1] if serving else sp.schedule,
    )  # fmt: skip
    for (nodes, gpn), tp, pp, cp, ep, etp, zero, mbs, rc, sched in axes:
        considered += 1
        if spec.constraints.max_gpus and nodes * gpn > spec.constraints.max_gpus:
            continue
        if tp > gpn:  # TP stays inside a node
            continue
        d = dict(spec.base)
        d["cluster"] = {**spec.base["cluster"], "nodes": nodes, "gpus_per_node": gpn}
        d["parallel"] = {
            "tp": tp, "pp": pp, "cp": cp, "ep": ep, "etp": etp, "zero_stage": zero,
            "microbatch_size": mbs, "recompute": rc, "schedule": sched,
        }  # fmt: skip
        d["name"] = _candidate_name(spec, nodes, gpn, d["parallel"])
        try:
            out.append(scenario_from_dict(d, base=spec.base_dir))
        except ScenarioError:
            continue
    return considered, out


def _candidate_name(spec: PlanSpec, nodes: int, gpus_per_node: int, p: dict[str, Any]) -> str:
    etp = f" etp{p['etp']}" if p["etp"] > 1 else ""
    if spec.serving:
        return f"{spec.name}[{nodes * gpus_per_node} GPUs tp{p['tp']} pp{p['pp']} ep{p['ep']}{etp}]"
    return (
        f"{spec.name}[n{nodes} tp{p['tp']} pp{p['pp']} ep{p['ep']}{etp} z{p['zero_stage']} "
        f"mb{p['microbatch_size']} {p['recompute']}]"
    )


def step_time_lower_bound_s(s: Scenario) -> float:
    """Compute at the GPU's dense peak, stretched by the 1F1B bubble: no simulation needed.
    Serving has no step to bound (0): its layouts are ranked by GPU count alone."""
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
        mem_B = least_memory_per_gpu_B(s)
        if mem_B > s.cluster.gpu.hbm_GB * 1e9:
            continue
        fitting.append(Candidate(s, mem_B / 1e9, step_time_lower_bound_s(s)))
    # Most promising first: by the analytic bound on run cost (or time), then fewer GPUs.
    fitting.sort(
        key=lambda c: (_objective(c.bound_step_s, c.scenario, spec.objective), c.scenario.gpus)
    )
    chosen = fitting[: spec.simulate_max]
    for c in chosen:
        c.result = simulate(c.scenario)
        _judge(c, spec.constraints)
        if progress:
            progress(1)
    done = [c for c in chosen if c.result is not None]
    done.sort(key=lambda c: _rank_key(c, spec.objective))
    meeting = [c for c in done if c.meets]
    return PlanResult(
        name=spec.name,
        objective=spec.objective,
        considered=considered,
        fitting=len(fitting),
        simulated=done,
        best=meeting[: spec.top],
        pareto=pareto_front(meeting),
        rejected=[c for c in done if not c.meets][: spec.top],
        serving=spec.serving,
        constraints=spec.constraints.model_dump(exclude_none=True),
    )


def least_memory_per_gpu_B(s: Scenario) -> float:
    """Bytes per GPU the layout needs at the least: a server under Poisson arrivals shrinks its
    batch to the KV cache that fits (one sequence at the least); anything else needs all of it."""
    w = s.workload
    if isinstance(w, InferenceWorkload) and w.arrival_rate_per_s is not None:
        from moesim.sim.inference import inference_memory

        return inference_memory(s, 1).total
    return memory_per_gpu(s).total


def _objective(step_s: float, s: Scenario, objective: str) -> float:
    return step_s * (s.gpus if objective == "cost" else 1)


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


def _rank_key(c: Candidate, objective: str) -> tuple[float, float]:
    cost, time = cost_and_time(c)
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
    if r.stage == "inference":
        c.usd_per_hour = s.gpus * s.cost.usd_per_gpu_hour
    if k.deadline_days and c.run_days and c.run_days > k.deadline_days:
        c.why_not.append(f"takes {c.run_days:.1f} days > {k.deadline_days:g}")
    if k.budget_usd and c.run_cost_usd and c.run_cost_usd > k.budget_usd:
        c.why_not.append(f"costs ${c.run_cost_usd:,.0f} > ${k.budget_usd:,.0f}")
    c.why_not += _slo_misses(r, k)
    c.meets = not c.why_not


def _slo_misses(r: Result, k: Constraints) -> list[str]:
    """'p99 TTFT 1.84 s > SLO 1 s' for each serving SLO the result misses."""
    out = []
    for label, got, slo in (
        ("TTFT", r.ttft_s_p99, k.ttft_p99_s),
        ("TPOT", r.tpot_s_p99, k.tpot_p99_s),
    ):
        if slo is None:
            continue
        if got is None:
            out.append(f"no p99 {label} measured (SLO {_seconds(slo)})")
        elif got > slo:
            out.append(f"p99 {label} {_seconds(got)} > SLO {_seconds(slo)}")
    return out


def _seconds(x: float) -> str:
    return f"{x * 1e3:.3g} ms" if x < 1 else f"{x:.3g} s"


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
