"""``simulate(scenario) -> Result``: build the context, run the stage's processes, read the
result off the ranks' intervals.

The step's time breakdown is read off the ranks' logs by ``moesim.sim.breakdown``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import simpy

from moesim.analytic.goodput import reliability_fields
from moesim.analytic.memory import memory_per_gpu, memory_per_stage
from moesim.analytic.microbatches import capped_microbatches, n_microbatches, sequences_per_step
from moesim.sim.breakdown import measure, stage_of, stage_table
from moesim.sim.context import SimContext
from moesim.sim.dualpipe_mirror import result_ranks
from moesim.sim.engine import Rank, run_to_completion
from moesim.sim.layer_runner import tp_block_factory
from moesim.sim.limits import check_simulation_size
from moesim.sim.moe_layer import moe_backward, moe_forward
from moesim.sim.placement import placement
from moesim.sim.profile import profile_label, resolve_profile
from moesim.sim.trace import write_trace
from moesim.sim.training_step import pipeline_pass
from moesim.sim.utilization import utilization
from moesim.sim.vector_engine import VectorRank, vector_applies
from moesim.specs import MoELayerWorkload, Result, Scenario

SIMULATED_STAGES = (
    "pretrain",
    "sft",
    "dpo",
    "grpo",
    "ppo",
    "moe_layer",
    "inference",
    "collective",
)


class UnsupportedStage(ValueError):
    """A workload stage the simulator does not run yet."""


def build_context(
    scenario: Scenario,
    fidelity: str | None = None,
    base_dir: Path | None = None,
    vector: bool | None = None,
) -> SimContext:
    s = scenario
    profile = resolve_profile(s.simulation.profile, s.cluster.gpu.name)
    w, p = s.workload, s.parallel
    if isinstance(w, MoELayerWorkload):
        tokens, mbs = float(w.tokens_per_gpu * p.tp), 1
    else:
        pairs = 2 if w.stage == "dpo" else 1
        tokens = float(p.microbatch_size * pairs * w.seq_len / p.cp)
        mbs = n_microbatches(s)
        if s.simulation.microbatches_simulated:  # at least what the schedule needs
            mbs = capped_microbatches(p, mbs, s.simulation.microbatches_simulated) or mbs
    ctx = SimContext(
        scenario=s,
        profile=profile,
        fidelity=fidelity or s.simulation.fidelity,
        tokens=tokens,
        microbatches=mbs,
        base_dir=base_dir,
        vector=vector,
    )
    if ctx.fidelity == "full" and not ctx.vector and vector_applies(s):
        # the vector engine was expected (the bound before the build) but cannot run it
        check_simulation_size(s, "full", vector=False)
    return ctx


def simulate(
    scenario: Scenario,
    fidelity: str | None = None,
    trace_path: str | Path | None = None,
    base_dir: Path | None = None,
    vector: bool | None = None,
) -> Result:
    """Simulate one step of ``scenario`` (one optimizer step; one layer pass for moe_layer).
    ``vector=False`` runs full fidelity with one SimPy process set per rank where the vector
    engine would apply (``moesim.sim.vector_engine``; for comparisons)."""
    stage = scenario.workload.stage
    if stage not in SIMULATED_STAGES:
        raise UnsupportedStage(
            f"workload.stage '{stage}' is not simulated yet (simulated: "
            f"{', '.join(SIMULATED_STAGES)})"
        )
    check_simulation_size(scenario, fidelity)
    if stage == "collective":  # one collective alone (moesim.sim.collective_stage)
        from moesim.sim.collective_stage import simulate_collective

        return simulate_collective(scenario)
    if stage == "inference" and scenario.workload.disaggregated is not None:
        from moesim.sim.pd_disaggregation import simulate_disaggregated

        return simulate_disaggregated(scenario, base_dir=base_dir)
    if stage == "inference":  # serving: its own server process (moesim.sim.inference)
        from moesim.sim.inference import simulate_inference

        return simulate_inference(scenario, trace_path=trace_path, base_dir=base_dir)
    if scenario.parallel.pipeline_balance == "auto" and stage != "moe_layer":
        return simulate_balanced(scenario, fidelity, trace_path, base_dir, vector)
    if stage in ("sft", "dpo", "grpo", "ppo"):  # phases composed in moesim.sim.post_training
        from moesim.sim.post_training import simulate_post_training

        return simulate_post_training(scenario, fidelity, trace_path, base_dir)
    if stage == "moe_layer":
        ctx = build_context(scenario, fidelity, base_dir)
        run_to_completion(ctx.env, _start_moe_layer(ctx))
        ranks = [ctx.ranks[g] for g in sorted(ctx.ranks)]
        step_s, breakdown = measure(ranks)
        extrapolated = False
    else:

        def run(s: Scenario) -> tuple[SimContext, list[Rank]]:
            ctx = build_context(s, fidelity, base_dir, vector)
            run_to_completion(ctx.env, pipeline_pass(ctx))
            return ctx, result_ranks(ctx)

        ctx, ranks, step_s, breakdown, extrapolated = simulate_pass(scenario, run)
    if trace_path is not None:
        write_trace(expand_ranks(ranks), trace_path)
    return _result(ctx, ranks, step_s, breakdown, extrapolated)


def expand_ranks(ranks: list) -> list[Rank]:
    """Vector ranks expanded into one ``Rank`` per member (``VectorRank.member_ranks``)."""
    out: list[Rank] = []
    for r in ranks:
        out += r.member_ranks() if isinstance(r, VectorRank) else [r]
    return out


def simulate_balanced(
    s: Scenario,
    fidelity: str | None = None,
    trace_path: str | Path | None = None,
    base_dir: Path | None = None,
    vector: bool | None = None,
) -> Result:
    """``pipeline_balance: auto``: simulate the candidate layouts that
    ``moesim.sim.pipeline_balance`` picks (its best estimates and the default one) and keep the
    fastest that fits in memory (the fastest when none fits). The result names the layout
    (``pipeline_layout``)."""
    from moesim.sim.pipeline_balance import balance_candidates

    even = s.model_copy(
        update={"parallel": s.parallel.model_copy(update={"pipeline_balance": "even"})}
    )
    if s.parallel.pp == 1:
        candidates = [even]
    else:
        candidates = balance_candidates(s, build_context(even, base_dir=base_dir))
    runs = [(simulate(c, fidelity, None, base_dir, vector), c) for c in candidates]
    best, chosen = min(runs, key=lambda rc: (rc[0].fits_in_memory is False, rc[0].step_time_s))
    if trace_path is not None:
        best = simulate(chosen, fidelity, trace_path, base_dir, vector)
    best.pipeline_balance = "auto"
    if chosen.parallel.pipeline_layout is not None:
        best.pipeline_layout = chosen.parallel.pipeline_layout
    return best


def simulate_pass(
    s: Scenario, run: Callable[[Scenario], tuple[SimContext, list[Rank]]]
) -> tuple[SimContext, list[Rank], float, dict[str, float], bool]:
    """``run(s)`` simulates a pipeline pass; with ``simulation.microbatches_simulated`` below
    the step's microbatches, the pass is extrapolated to all of them by a line through a second
    run (``extrapolate``). Returns (context, ranks of the first run, step time, breakdown,
    whether it was extrapolated)."""
    ctx, ranks = run(s)
    step_s, parts = measure(ranks, stage_of(ctx))
    total = n_microbatches(s)
    if ctx.microbatches >= total:
        return ctx, ranks, step_s, parts, False
    ctx2, ranks2 = run(second_run(s, ctx.microbatches))
    step_s, parts = extrapolate(
        total,
        (ctx.microbatches, step_s, parts),
        (ctx2.microbatches, *measure(ranks2, stage_of(ctx2))),
    )
    return ctx, ranks, step_s, parts, True


def second_run(s: Scenario, simulated: int) -> Scenario:
    """The scenario capped at another count its schedule runs the same way
    (``capped_microbatches``): about half of ``simulated``, or where no smaller count does
    (DualPipe at 2·pp), the next one above (at worst the whole step)."""
    p, total = s.parallel, n_microbatches(s)
    other = capped_microbatches(p, total, simulated // 2, up=False)
    if other is None or other >= simulated:
        other = capped_microbatches(p, total, simulated + 1)
    assert other is not None and other != simulated  # the whole step always runs
    sim = s.simulation.model_copy(update={"microbatches_simulated": other})
    return s.model_copy(update={"simulation": sim})


def extrapolate(
    total: int, a: tuple[int, float, dict[str, float]], b: tuple[int, float, dict[str, float]]
) -> tuple[float, dict[str, float]]:
    """Step time and breakdown at ``total`` microbatches from runs of ``a[0]`` and ``b[0]``:
    past the pipeline's fill and drain a step grows by the same time per microbatch (1F1B:
    (m + p − 1)·(F + B) + the gradient tail), so a line through the two runs."""
    (m1, step1, parts1), (m2, step2, parts2) = a, b

    def line(y1: float, y2: float) -> float:
        return max(y1 + (y1 - y2) / (m1 - m2) * (total - m1), 0.0)

    return line(step1, step2), {k: line(v, parts2[k]) for k, v in parts1.items()}


def _start_moe_layer(ctx: SimContext) -> dict[int, simpy.Process]:
    """One MoE layer over one EP group (symmetric: one rank), forward or forward + backward."""
    w = ctx.scenario.workload
    assert isinstance(w, MoELayerWorkload)
    if ctx.moe is None:
        raise UnsupportedStage("workload.stage 'moe_layer' needs an MoE model")
    layer = next(i for i, lc in ctx.layers.items() if lc.is_moe)
    lc = ctx.layers[layer]
    block = tp_block_factory(ctx)
    gpus = ctx.ep_group(0) if ctx.fidelity == "full" else (0,)

    def program(g: int):
        rank = ctx.rank(g)
        draw = ctx.moe_draw(g, 0, 0, 1)
        yield from moe_forward(ctx, rank, lc, (layer, 0, "f"), draw, block)
        if w.passes == "forward_backward":
            yield from moe_backward(ctx, rank, lc, (layer, 0, "b"), draw, block)

    return {g: ctx.env.process(program(g)) for g in gpus}


def _result(
    ctx: SimContext,
    ranks: list[Rank],
    step_s: float,
    breakdown: dict[str, float],
    extrapolated: bool = False,
) -> Result:
    from moesim.analytic.memory import fits, memory_note

    s = ctx.scenario
    w = s.workload
    gpus = s.gpus
    per_stage = None if isinstance(w, MoELayerWorkload) else memory_per_stage(s)
    mem = memory_per_gpu(s, per_stage)
    flops_per_token = ctx.flops.model_flops
    breakdown = dict(breakdown)
    stages = None
    if s.parallel.pp > 1 and per_stage is not None:
        stages = stage_table(ctx, breakdown, [e.total / 1e9 for e in per_stage])
    out = Result(
        name=s.name,
        stage=w.stage,
        gpus=gpus,
        params_total=float(ctx.counts.total_main),
        params_active=float(ctx.counts.active_main),
        model_flops_per_token=flops_per_token,
        memory_per_gpu_GB=mem.as_GB(),
        fits_in_memory=fits(s, mem),
        time_breakdown_s=breakdown,
    )
    extra: dict[str, object] = {
        "memory_note": memory_note(s, mem),
        "fidelity": ctx.fidelity,
        "stages": stages,
        "pipeline_layout": _layout_string(ctx) if stages else None,
        "network": s.simulation.network,
        "simulated_ranks": sum(getattr(r, "size", 1) for r in ranks if not _mirrors(r)),
        "mirrored_ranks": sum(map(_mirrors, ranks)) or None,
        "microbatches": ctx.microbatches,
        "profile": profile_label(ctx.profile),
        "placement": placement(ctx.grid, ctx.topo, moe=ctx.moe is not None),
    }
    if ctx.offered_copies:
        extra["tokens_dropped_fraction"] = ctx.dropped_copies / ctx.offered_copies
    if isinstance(w, MoELayerWorkload):

        def total(names: tuple[str, ...]) -> float:
            return max(sum(iv[4] - iv[3] for iv in r.intervals if iv[1] in names) for r in ranks)

        out.step_time_s = step_s
        out.dispatch_s = total(("dispatch", "dispatch_bwd"))
        out.combine_s = total(("combine", "combine_bwd"))
        out.expert_compute_s = total(("experts", "experts_bwd"))
        tokens = w.tokens_per_gpu * gpus
    else:
        tokens = sequences_per_step(s) * w.seq_len
        if ctx.microbatches < n_microbatches(s):  # the step extrapolated to all of them
            extra["microbatches_total"] = n_microbatches(s)
            extra["extrapolated"] = extrapolated
        out.step_time_s = step_s
    if step_s > 0:
        out.tokens_per_s = tokens / step_s
        out.tokens_per_s_per_gpu = out.tokens_per_s / gpus
        if not isinstance(w, MoELayerWorkload):
            recompute = ctx.flops.recompute(s.parallel.recompute, s.parallel.recompute_modules)
            used = utilization(s, flops_per_token, recompute, out.tokens_per_s_per_gpu)
            for k, v in used.items():
                setattr(out, k, v)
        total_tokens = getattr(w, "total_tokens", None)
        if total_tokens:
            out.gpu_hours = total_tokens / out.tokens_per_s * gpus / 3600.0
            out.cost_usd = out.gpu_hours * s.cost.usd_per_gpu_hour
        if not isinstance(w, MoELayerWorkload):  # failures over a long run (analytic.goodput)
            extra |= reliability_fields(s, out.tokens_per_s, total_tokens)
    for k, v in extra.items():
        if v is not None:
            setattr(out, k, v)
    return out


def _mirrors(rank: Rank | VectorRank) -> bool:
    """A rank that replays another's log (DualPipe's mirror: ``moesim.sim.dualpipe_mirror``)."""
    return getattr(rank, "mirror_of", None) is not None


def _layout_string(ctx: SimContext) -> str:
    """The Megatron-Core layout string of the layout that ran."""
    from moesim.analytic.layout import layout_symbols
    from moesim.specs.pipeline_layout import write_layout

    return write_layout(layout_symbols(ctx.model, ctx.parallel))
