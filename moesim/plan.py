"""Capacity planning: search cluster sizes and parallel layouts for the cheapest or fastest
configuration that fits in memory and meets a deadline, a budget or serving SLOs.

The search prunes with the analytic layer first, without simulating: a layout that cannot be
built or does not fit is dropped, and so is one whose analytic *lower bound* already misses a
constraint (run time over the deadline, run cost over the budget, p99 TPOT over its SLO). The
survivors are ranked by the bound on the objective and the best ``simulate_max`` simulated; the
answer (the best configurations and the Pareto front of run time against cost) is built from
simulated points only. Dropping by the bound before ranking matters: the cheapest layouts by
the bound are the slowest, and with a tight deadline they would fill every simulation slot.

The bounds are lower bounds of what the simulator returns (tests/test_plan.py checks it on a
sample of layouts), because each leaves out only time the simulator adds:

- training step: the FLOPs the GPUs execute (forward + backward + recomputation; with LoRA the
  frozen weights' backward computes input gradients only, so forward × 2; routed-expert FLOPs
  left out where a capacity factor may drop tokens) at the GPU's peak × the best efficiency of
  any compute curve in the profile the simulation uses, stretched by the pipeline bubble of
  the schedule ((m + pp − 1)/m for 1F1B and GPipe, ÷ v for interleaved; none for DualPipe).
  No communication, memory-bound ops, optimizer or load imbalance. Run days and cost follow
  from it as from a simulated step. RL stages (GRPO, PPO) have no bound (0): rollouts dominate.
- serving p99 TPOT: every decode step reads the dense weights (attention, dense FFN, shared
  experts, LM head) of a tensor-parallel shard, through every pipeline stage in turn, at no
  more than the profile's best HBM efficiency; a request's TPOT spans output_len − 1 decode
  steps, so its p99 is at least one step (over the tokens per step of speculative decoding).
  Routed experts and the KV cache are left out.

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

With ``reliability`` (``moesim.specs.faults``: GPU MTBF, checkpoint write and restart times),
a run's days and cost are those of the run as it fails and restarts: throughput × goodput,
with the checkpoint interval chosen per layout (``checkpoint_interval_s: auto``: the optimum
for that layout's GPU count, ``moesim.analytic.goodput``). Goodput depends on the GPU count,
not on the step, so the lower bounds divide by it and stay lower bounds; the rows report
goodput beside throughput.

For serving (``workload.stage: inference`` with ``arrival_rate_per_s``), constraints take
``ttft_p99_s`` and ``tpot_p99_s``; the request rate is split over data-parallel replicas.
``search.max_num_seqs`` and ``search.max_num_batched_tokens`` (lists) also try the engine's
concurrency limit and per-step token budget: a smaller budget shortens the steps decodes share
with prefill chunks (TPOT) and lengthens a prompt's prefill (TTFT).
``search.two_batch_overlap: [false, true]`` tries serving with and without two-batch overlap.
``search.gpus`` (total GPUs, e.g. ``[1, 2, 4, 8, 16]``) replaces ``nodes`` where a deployment
may be a slice of a node, and ``search.etp`` shards experts over tensor ranks as vLLM does. A
serving layout's cost is its price per hour (``usd_per_hour``, and ``cost_per_million_tokens_usd``
at the offered rate); ``objective: time`` minimises p99 TPOT instead.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, NonNegativeInt, PositiveInt, ValidationError

from moesim.analytic.flops import token_flops
from moesim.analytic.goodput import goodput_of
from moesim.analytic.memory import memory_per_gpu
from moesim.analytic.microbatches import effective_schedule, n_microbatches, sequences_per_step
from moesim.analytic.params import count_params
from moesim.scenario_io import (
    ScenarioError,
    apply_overrides,
    format_validation_error,
    load_yaml,
    resolve_ids,
    scenario_from_dict,
)
from moesim.specs import (
    BYTES_PER_ELEMENT,
    DPOWorkload,
    InferenceWorkload,
    PretrainWorkload,
    Result,
    Scenario,
    SFTWorkload,
    Spec,
    Workload,
)

SECONDS_PER_DAY = 86_400.0


class SearchSpace(Spec):
    nodes: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    tp: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8])
    pp: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8])
    cp: list[PositiveInt] = Field(default_factory=lambda: [1])
    ep: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    etp: list[PositiveInt] = Field(default_factory=lambda: [1])
    gpus: list[PositiveInt] | None = Field(
        None, description="total GPUs (replaces nodes): a slice of a node when below its size"
    )
    zero_stage: list[NonNegativeInt] = Field(default_factory=lambda: [1])
    microbatch_size: list[PositiveInt] = Field(default_factory=lambda: [1, 2])
    recompute: list[str] = Field(default_factory=lambda: ["selective", "full"])
    schedule: list[str] = Field(default_factory=lambda: ["1f1b"])
    two_batch_overlap: list[bool] = Field(
        default_factory=lambda: [False],
        description="serving: try each (workload.two_batch_overlap), e.g. [false, true]",
    )
    max_num_seqs: list[int] | None = Field(
        None,
        description="serving: engine concurrency limits to try (workload.max_batch_size); "
        "default the workload's",
    )
    max_num_batched_tokens: list[int] | None = Field(
        None,
        description="serving: tokens-per-step budgets to try (workload.max_prefill_tokens); "
        "default the workload's",
    )


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
                "engine_searched": bool(re.search(r" (seqs|tok)\d+\]$", s.name)),
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


def load_plan(path: str | Path, overrides: Sequence[tuple[str, Any]] = ()) -> PlanSpec:
    """A plan file; ``overrides`` (``--set``) replace its fields first."""
    path = Path(path)
    data, lines = load_yaml(path)
    apply_overrides(data, overrides)
    return plan_from_dict(data, path.parent, str(path), lines)


def plan_from_dict(
    data: dict[str, Any], base_dir: Path | None = None, source: str = "", lines: dict | None = None
) -> PlanSpec:
    """A PlanSpec; every problem of the file is reported at once, each with its line."""
    known = {"name", "description", "model", "gpu", "gpus_per_node", "workload", "cost"}
    known |= {"search", "constraints", "objective", "top", "simulate_max", "precision", "routing"}
    known |= {"simulation", "intra_node", "inter_node", "reliability"}
    known |= {"nvlink_domain_gpus", "fabric"}
    problems: list[str] = []

    def at(*loc: Any) -> str:
        line = _line_of(loc, lines)
        where = f"{source}:{line}" if source and line else source
        return f"{where}: " if where else ""

    unknown = sorted(set(data) - known, key=str)
    if unknown:
        problems.append(f"{at(unknown[0])}unknown plan keys {unknown}: allowed {sorted(known)}")
    for key in ("model", "gpu", "workload"):
        if key not in data:
            problems.append(f"{at()}{key}: required and missing: add it")
    search = constraints = None
    for key, model in (("search", SearchSpace), ("constraints", Constraints)):
        try:
            value = model.model_validate(data.get(key) or {})
        except ValidationError as e:
            problems.append(format_validation_error(e, source, lines, (key,), model))
            continue
        if key == "search":
            search = value
        else:
            constraints = value
    objective = data.get("objective", "cost")
    if objective not in ("cost", "time"):
        problems.append(f"{at('objective')}objective: '{objective}' is not cost or time")
    top = _count(data, "top", 10, MAX_TOP, problems, at)
    simulate_max = _count(data, "simulate_max", 64, MAX_PLAN_SIMULATIONS, problems, at)
    workload = data.get("workload")
    stage = workload.get("stage") if isinstance(workload, dict) else None
    if isinstance(workload, dict):  # checked alone, so its errors come before the search's
        try:
            resolved = _resolved_workload(workload, base_dir, source, lines)
            _WorkloadBox.model_validate({"workload": resolved})
        except ValidationError as e:
            problems.append(format_validation_error(e, source, lines, (), _WorkloadBox))
        except ScenarioError as e:
            problems.append(str(e))
    if isinstance(workload, dict) and workload.get("disaggregated"):
        problems.append(
            f"{at('workload', 'disaggregated')}workload.disaggregated: a plan searches one "
            "layout for every GPU; the pools of a disaggregated deployment set their own: "
            "simulate or sweep them instead"
        )
    if constraints is not None:
        slos = [k for k in ("ttft_p99_s", "tpot_p99_s") if getattr(constraints, k) is not None]
        if slos and stage != "inference":
            problems.append(
                f"{at('constraints', slos[0])}constraints.{slos[0]}: a serving SLO needs "
                f"workload.stage: inference (this plan's stage is {stage})"
            )
    if problems:
        raise ScenarioError(_by_line(problems))
    assert search is not None and constraints is not None
    cluster = {"gpu": data["gpu"]}
    for key in ("gpus_per_node", "intra_node", "inter_node", "nvlink_domain_gpus", "fabric"):
        if key in data:
            cluster[key] = data[key]
    base = {
        "name": data.get("name", "plan"),
        "model": data["model"],
        "cluster": cluster,
        "workload": data["workload"],
    }
    for key in ("cost", "precision", "routing", "simulation", "reliability"):
        if key in data:
            base[key] = data[key]
    base = resolve_ids(base, base_dir, source, lines)
    gpn = _gpus_per_node(base)
    for g in search.gpus or []:
        if g > gpn and g % gpn:
            problems.append(
                f"{at('search', 'gpus')}search.gpus: {g} is neither a slice of one {gpn}-GPU "
                f"node nor whole nodes: use at most {gpn} or a multiple of {gpn}"
            )
    if problems:
        raise ScenarioError("\n".join(problems))
    return PlanSpec(
        name=data.get("name", "plan"),
        base=base,
        search=search,
        constraints=constraints,
        objective=objective,
        top=top,
        simulate_max=simulate_max,
        base_dir=base_dir,
    )


#: the most layouts a plan simulates (``simulate_max``): each takes 0.3-2 s on one core, so 512
#: is minutes already; the analytic bound ranks the rest
MAX_PLAN_SIMULATIONS = 512
MAX_TOP = 1000


class _WorkloadBox(Spec):
    """The workload field alone, for its errors' fixes (``_bound_fix`` walks a model)."""

    workload: Workload


def _resolved_workload(
    workload: dict[str, Any], base_dir: Path | None, source: str, lines: dict | None
) -> dict[str, Any]:
    """The workload with its catalog ids (reward_model, critic_model) resolved."""
    return resolve_ids({"workload": workload}, base_dir, source, lines)["workload"]


def _by_line(problems: list[str]) -> str:
    """The problems in the file's order (``file:LINE: ...``; those without a line first)."""
    lines = [line for p in problems for line in p.split("\n")]

    def line_no(text: str) -> int:
        m = re.match(r"[^\n]*?:(\d+): ", text)
        return int(m.group(1)) if m else 0

    return "\n".join(sorted(lines, key=line_no))


def _line_of(loc: tuple, lines: dict | None) -> int | None:
    for n in range(len(loc), 0, -1):
        if lines and loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _count(
    data: dict[str, Any], key: str, default: int, most: int, problems: list[str], at: Any
) -> int:
    """``top`` / ``simulate_max``: an integer in [1, most], else a problem naming the key."""
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        problems.append(
            f"{at(key)}{key}: {value!r} is not an integer in [1, {most:,}]: set it to one"
            + (" (each simulation takes 0.3-2 s on a core)" if key == "simulate_max" else "")
        )
        return default
    return value


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
        (sp.max_num_seqs or [None]) if serving else [None],
        (sp.max_num_batched_tokens or [None]) if serving else [None],
        sp.two_batch_overlap if serving else [None],
    )  # fmt: skip
    for (nodes, gpn), tp, pp, cp, ep, etp, zero, mbs, rc, sched, seqs, budget, tbo in axes:
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
        d["workload"], engine = _engine_knobs(spec.base["workload"], seqs, budget)
        if tbo is not None:
            d["workload"]["two_batch_overlap"] = tbo
            engine += " tbo" if tbo else ""
        d["name"] = d["name"][:-1] + engine + "]" if engine else d["name"]
        try:
            out.append(scenario_from_dict(d, base=spec.base_dir))
        except ScenarioError:
            continue
    return considered, out


def _engine_knobs(
    workload: dict[str, Any], seqs: int | None, budget: int | None
) -> tuple[dict[str, Any], str]:
    """A serving workload with the searched engine limits set (under moesim's names; the
    vLLM aliases dropped so the two cannot disagree) and the name suffix that says them."""
    wl, suffix = dict(workload), ""
    if seqs is not None:
        wl.pop("max_num_seqs", None)
        wl["max_batch_size"] = seqs
        suffix += f" seqs{seqs}"
    if budget is not None:
        wl.pop("max_num_batched_tokens", None)
        wl["max_prefill_tokens"] = budget
        suffix += f" tok{budget}"
    return wl, suffix


def _candidate_name(spec: PlanSpec, nodes: int, gpus_per_node: int, p: dict[str, Any]) -> str:
    etp = f" etp{p['etp']}" if p["etp"] > 1 else ""
    etp += f" cp{p['cp']}" if p["cp"] > 1 else ""  # else cp layouts share their cp-1 name
    if spec.serving:
        return f"{spec.name}[{nodes * gpus_per_node} GPUs tp{p['tp']} pp{p['pp']} ep{p['ep']}{etp}]"
    return (
        f"{spec.name}[n{nodes} tp{p['tp']} pp{p['pp']} ep{p['ep']}{etp} z{p['zero_stage']} "
        f"mb{p['microbatch_size']} {p['recompute']}]"
    )


def _profile_of(s: Scenario):
    from moesim.sim.profile import resolve_profile

    return resolve_profile(s.simulation.profile, s.cluster.gpu.name)  # as the simulator does


def best_compute_efficiency(s: Scenario) -> float:
    """The highest efficiency any compute curve of the scenario's profile reaches: no op of the
    simulation runs its FLOPs faster than peak × this (curves are flat beyond their ends)."""
    prof = _profile_of(s)
    return max(e for c in ("gemm", "grouped_gemm", "attention") for _, e in prof.compute[c].points)


def best_hbm_efficiency(s: Scenario) -> float:
    """The highest HBM efficiency of the profile: the bytes of a GEMM move no faster."""
    return max(e for _, e in _profile_of(s).hbm.points)


def training_flops_lower_bound(s: Scenario) -> float | None:
    """FLOPs one training step executes at the least, over all GPUs (see the module docstring);
    None for stages without a bound (RL, serving, one MoE layer)."""
    w, p, m = s.workload, s.parallel, s.model
    if not isinstance(w, PretrainWorkload | SFTWorkload | DPOWorkload):
        return None
    tf = token_flops(m, w.seq_len)
    lora = getattr(w, "lora", None) is not None
    passes = 2.0 if lora else 3.0  # frozen weights: no weight gradients
    per_token = passes * tf.forward + (
        0.0 if lora else tf.recompute(p.recompute, p.recompute_modules)
    )
    if m.moe is not None and m.moe.capacity_factor is not None:  # dropped copies do no work
        routed = sum(x.routed_experts for x in tf.layers)
        recomputed = p.recompute == "full" or "moe" in p.recomputed_modules
        per_token -= passes * routed + (routed if recomputed and not lora else 0.0)
    return max(per_token, 0.0) * sequences_per_step(s) * w.seq_len


def pipeline_stretch(s: Scenario) -> float:
    """Step time over per-GPU work with equal stages: (m + pp − 1)/m for 1F1B and GPipe,
    (m + (pp − 1)/v)/m interleaved, 1 for DualPipe (whose overlap the bound does not model)."""
    p = s.parallel
    m = n_microbatches(s)
    schedule = effective_schedule(p, m)  # a dualpipe whose layout does not apply runs 1F1B
    if p.pp == 1 or schedule == "dualpipe":
        return 1.0
    v = p.virtual_stages if schedule == "interleaved_1f1b" else 1
    return 1.0 + (p.pp - 1) / (m * v)


def step_time_lower_bound_s(s: Scenario) -> float:
    """A training step's time at the least (no simulation): its FLOPs at the GPU's peak × the
    profile's best efficiency, stretched by the pipeline bubble. 0 where there is no bound
    (serving layouts are ranked by GPU count alone)."""
    flops = training_flops_lower_bound(s)
    if not flops:
        return 0.0
    peak = s.cluster.gpu.peak_TFLOPS(s.precision.compute) * 1e12
    return flops / (s.gpus * peak * best_compute_efficiency(s)) * pipeline_stretch(s)


def tpot_lower_bound_s(s: Scenario) -> float | None:
    """p99 time per output token at the least: one decode step's read of the dense weights of
    a tensor-parallel shard (every stage in turn) at the best HBM efficiency. None where the
    workload is not serving or a request has a single output token (no TPOT)."""
    w, m, p = s.workload, s.model, s.parallel
    if not isinstance(w, InferenceWorkload) or w.max_output_len < 2:
        return None
    dense = sum(
        x.attention + x.dense_ffn + x.shared_experts for x in count_params(m).decoder_layers
    )
    dense += m.vocab_size * m.d_model  # the LM head, read for every step's logits
    bytes_per_gpu = dense * BYTES_PER_ELEMENT[s.precision.weights_inference] / p.tp
    step_s = bytes_per_gpu / (s.cluster.gpu.hbm_TBps * 1e12 * best_hbm_efficiency(s))
    # speculative decoding: a step (at least one weight read) yields tokens_per_step tokens
    per_step = w.speculative.tokens_per_step if w.speculative is not None else 1.0
    return step_s / per_step


def _bound(c: Candidate) -> None:
    """Fill a candidate's lower bounds (run days and cost from the step bound)."""
    s = c.scenario
    c.bound_tpot_s = tpot_lower_bound_s(s)
    g = goodput_of(s)
    c.goodput = g.goodput if g is not None else None
    total = getattr(s.workload, "total_tokens", None)
    if c.bound_step_s > 0 and total and not isinstance(s.workload, InferenceWorkload):
        seconds = total * c.bound_step_s / (sequences_per_step(s) * s.workload.seq_len)
        if c.goodput:  # exact for the candidate (GPUs, MTBF, checkpoints): still a lower bound
            seconds /= c.goodput
        c.bound_run_days = seconds / SECONDS_PER_DAY
        c.bound_run_cost_usd = seconds / 3600 * s.gpus * s.cost.usd_per_gpu_hour


def bound_misses(c: Candidate, k: Constraints) -> dict[str, str]:
    """The constraints a candidate's lower bounds already miss: constraint -> why."""
    out = {}
    if k.deadline_days and c.bound_run_days and c.bound_run_days > k.deadline_days:
        out["deadline_days"] = (
            f"takes ≥ {c.bound_run_days:.1f} days (lower bound) > {k.deadline_days:g}"
        )
    if k.budget_usd and c.bound_run_cost_usd and c.bound_run_cost_usd > k.budget_usd:
        out["budget_usd"] = (
            f"costs ≥ ${c.bound_run_cost_usd:,.0f} (lower bound) > ${k.budget_usd:,.0f}"
        )
    if k.tpot_p99_s and c.bound_tpot_s and c.bound_tpot_s > k.tpot_p99_s:
        out["tpot_p99_s"] = (
            f"p99 TPOT ≥ {_seconds(c.bound_tpot_s)} (weights read per decode step) "
            f"> SLO {_seconds(k.tpot_p99_s)}"
        )
    return out


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
    survivors: list[Candidate] = []
    pruned_by = dict.fromkeys(("deadline_days", "budget_usd", "tpot_p99_s"), 0)
    for c in fitting:
        _bound(c)
        misses = bound_misses(c, spec.constraints)
        for key in misses:
            pruned_by[key] += 1
        if misses:
            c.meets, c.why_not = False, list(misses.values())
        else:
            survivors.append(c)
    # Most promising first: by the bound on run cost (or time), then fewer GPUs.
    survivors.sort(
        key=lambda c: (_objective(c.bound_step_s, c.scenario, spec.objective), c.scenario.gpus)
    )
    chosen = survivors[: spec.simulate_max]
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
        buildable=len(scenarios),
        pruned=len(fitting) - len(survivors),
        pruned_by=pruned_by,
        not_simulated=len(survivors) - len(chosen),
    )


def least_memory_per_gpu_B(s: Scenario) -> float:
    """Bytes per GPU the layout needs at the least: a server under Poisson arrivals shrinks its
    batch to the KV cache that fits (one sequence at the least); anything else needs all of it."""
    w = s.workload
    if isinstance(w, InferenceWorkload) and w.arrival_rate_per_s is not None:
        from moesim.sim.serving_memory import inference_memory

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
        # with reliability, the run as it fails and restarts: effective_tokens_per_s
        seconds = total / (r.effective_tokens_per_s if r.goodput else r.tokens_per_s)
        c.run_days = seconds / SECONDS_PER_DAY
        c.run_cost_usd = seconds / 3600 * s.gpus * s.cost.usd_per_gpu_hour
    if r.stage == "inference":
        c.usd_per_hour = s.gpus * s.cost.usd_per_gpu_hour
    if r.goodput == 0.0:
        c.why_not.append("never completes: a checkpoint segment outlasts twice the job's MTBF")
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
