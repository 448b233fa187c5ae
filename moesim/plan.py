"""Capacity planning: search cluster sizes and parallel layouts for the cheapest or fastest
configuration that fits in memory and meets a deadline, a budget or serving SLOs.

The search prunes with the analytic layer first, without simulating: a layout that cannot be
built or does not fit is dropped, and so is one whose analytic *lower bound* already misses a
constraint (run time over the deadline, run cost over the budget, p99 TPOT over its SLO). The
survivors are ranked by the bound on the objective and the best ``simulate_max`` simulated; the
answer (the best configurations and the Pareto front of run time against cost, whose rows are
``moesim.plan_result``) is built from simulated points only. Dropping by the bound before
ranking matters: the cheapest layouts by the bound are the slowest, and with a tight deadline
they would fill every simulation slot.

The bounds are lower bounds of what the simulator returns (tests/test_plan.py and
tests/test_plan_serving.py check them on a sample of layouts), because each leaves out only
time the simulator adds:

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
``search.num_speculative_tokens`` (a list; needs ``workload.speculative``) tries each number of
drafts per step: more drafts yield more tokens per step at a given acceptance, and cost a longer
verify, more drafter passes and more of the token budget.
``search.gpus`` (total GPUs, e.g. ``[1, 2, 4, 8, 16]``) replaces ``nodes`` where a deployment
may be a slice of a node, and ``search.etp`` shards experts over tensor ranks as vLLM does. A
serving layout's cost is its price per hour (``usd_per_hour``, and ``cost_per_million_tokens_usd``
at the offered rate); ``objective: time`` minimises p99 TPOT instead. A disaggregated base
(``workload.disaggregated``) is searched over its pools instead (``search.prefill`` and
``search.decode``: gpus or nodes, tp, pp, ep, etp, max_num_seqs; ``moesim.plan_pd``): every
pairing, the cluster being both pools' GPUs, its memory bound each pool's weights and its TPOT
bound the decode pool's; the colocated axes (nodes, gpus, tp, pp, cp, ep, etp) are refused there.
"""

from __future__ import annotations

from collections.abc import Callable

from moesim.analytic.goodput import goodput_of
from moesim.analytic.microbatches import sequences_per_step
from moesim.plan_bounds import (
    best_compute_efficiency,
    best_hbm_efficiency,
    least_memory_per_gpu_B,
    pipeline_stretch,
    step_time_lower_bound_s,
    tpot_lower_bound_s,
    training_flops_lower_bound,
)
from moesim.plan_file import (
    MAX_PLAN_SIMULATIONS,
    MAX_TOP,
    Constraints,
    PlanSpec,
    SearchSpace,
    load_plan,
    plan_from_dict,
)
from moesim.plan_result import Candidate, PlanResult, cost_and_time, pareto_front
from moesim.plan_space import candidates, cluster_sizes
from moesim.specs import InferenceWorkload, Result, Scenario

SECONDS_PER_DAY = 86_400.0

# the plan's API: the search (here), its space (plan_space), its file (plan_file), its bounds
# (plan_bounds) and its rows (plan_result)
__all__ = [
    "MAX_PLAN_SIMULATIONS",
    "MAX_TOP",
    "Candidate",
    "Constraints",
    "PlanResult",
    "PlanSpec",
    "SearchSpace",
    "best_compute_efficiency",
    "best_hbm_efficiency",
    "bound_misses",
    "candidates",
    "cluster_sizes",
    "cost_and_time",
    "least_memory_per_gpu_B",
    "load_plan",
    "pareto_front",
    "pipeline_stretch",
    "plan_from_dict",
    "run_plan",
    "step_time_lower_bound_s",
    "tpot_lower_bound_s",
    "training_flops_lower_bound",
]


# -- the search -----------------------------------------------------------------------------
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
    searched = bool(spec.search.max_num_seqs or spec.search.max_num_batched_tokens)
    fitting: list[Candidate] = []
    for s in scenarios:
        mem_B = least_memory_per_gpu_B(s)
        if mem_B > s.cluster.gpu.hbm_GB * 1e9:
            continue
        bound_s = step_time_lower_bound_s(s)
        fitting.append(Candidate(s, mem_B / 1e9, bound_s, engine_searched=searched))
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


def _objective(step_s: float, s: Scenario, objective: str) -> float:
    return step_s * (s.gpus if objective == "cost" else 1)


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
