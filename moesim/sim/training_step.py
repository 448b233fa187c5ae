"""A training step as SimPy processes: layers, pipeline passes, gradient buckets, optimizer.

Reusable pieces (post-training stages compose them):

- ``LayerRunner.forward`` / ``.backward`` (``moesim.sim.layer_runner``): one transformer layer
  for one microbatch on one rank, with its TP collectives, its context-parallel ring exchange,
  its MoE block and recomputation.
- ``pipeline_pass(ctx, backward=...)``: every simulated rank runs its schedule's tasks, waiting
  for activations (and gradients) from its pipeline neighbours; ``backward=False`` is a
  forward-only pass (a reference model's log-probs, a reward model, prefill).
- ``GradBuckets`` (``moesim.sim.grad_sync``, as are the optimizer's pieces): gradients of the
  last microbatch's backward are reduced in buckets on the ``dp`` stream while the backward goes
  on (Megatron's overlapped grad reduce), non-expert gradients over the dp·cp group, expert
  gradients over the expert-data-parallel group.
- ``optimizer_step_ops``: the optimizer's memory-bound passes over the rank's shard (gradients
  to fp32, their norm, Adam, weights written back: ``moesim.sim.optimizer_step``) and, under
  ZeRO ≥ 1, the parameter all-gather (overlapped with the next step's forward when
  ``overlap_dp``: it is then issued at the start of the step and the first forward of each
  chunk waits for its shard).
"""

from __future__ import annotations

import simpy

from moesim.analytic.comm import pp_send_bytes
from moesim.analytic.microbatches import effective_schedule, n_microbatches
from moesim.sim.context import SimContext
from moesim.sim.engine import Rank
from moesim.sim.ep_overlap import overlap_order, overlaps
from moesim.sim.grad_sync import (
    GradBuckets,
    optimizer_step_ops,
    param_all_gather,
    stage_params_on_rank,
)
from moesim.sim.layer_runner import LayerRunner
from moesim.sim.schedules import Task, schedule
from moesim.sim.stage_extras import StageExtras


# -- the pipeline -------------------------------------------------------------------------------
class Pipeline:
    """Runs every simulated rank's schedule with pipeline sends between neighbours."""

    def __init__(self, ctx: SimContext, runner: LayerRunner | None = None):
        self.ctx = ctx
        self.runner = runner or LayerRunner(ctx)
        self.inbox: dict[tuple, simpy.Event] = {}
        p = ctx.parallel
        self.send_bytes = pp_send_bytes(
            ctx.model, p, ctx.scenario.workload.seq_len, ctx.precision.activation_bytes
        )
        self.extras = StageExtras(ctx)
        self.virtual = p.pp * p.virtual_stages

    def _box(self, key: tuple) -> simpy.Event:
        ev = self.inbox.get(key)
        if ev is None:
            ev = self.inbox[key] = self.ctx.env.event()
        return ev

    def _send(self, rank: Rank, dst: int, name: str, key: tuple):
        t = self.ctx.p2p_s(rank.gpu, dst, self.send_bytes)
        link = self.ctx.link_of((rank.gpu, dst))
        yield from rank.comm("pp", name, "pp_comm", t, link)
        rank.notify(self._box(key))

    def run_task(self, rank: Rank, task: Task, buckets: GradBuckets | None, ready: dict):
        ctx, runner = self.ctx, self.runner
        stage, q = ctx.grid.coords(rank.gpu)
        st = ctx.stages[stage]
        vs = task.chunk * ctx.parallel.pp + stage
        layers = st.chunks[task.chunk]
        mb = task.microbatch
        if task.kind == "F":
            if task.chunk in ready:
                yield ready.pop(task.chunk)
            if vs > 0:
                yield self._box(("F", q, mb, vs))
            yield from self.extras.forward(rank, stage, task.chunk, first=True)
            for layer in layers:
                yield from runner.forward(rank, layer, mb)
            yield from self.extras.forward(rank, stage, task.chunk, first=False)
            if vs < self.virtual - 1:
                dst = ctx.grid.pp_peer(rank.gpu, +1)
                rank.start(self._send(rank, dst, "send_activation", ("F", q, mb, vs + 1)))
            return
        if vs < self.virtual - 1:
            yield self._box(("B", q, mb, vs))
        yield from self.extras.backward(rank, stage, task.chunk, first=True)
        last_mb = mb == ctx.microbatches - 1
        for layer in reversed(layers):
            yield from runner.backward(rank, layer, mb)
            if last_mb and buckets is not None:
                lc = ctx.layers[layer]
                buckets.add(lc.non_expert_params, lc.expert_params)
        yield from self.extras.backward(rank, stage, task.chunk, first=False)
        if last_mb and buckets is not None:
            dense, _ = stage_params_on_rank(ctx, stage, task.chunk)
            dense -= sum(ctx.layers[i].non_expert_params for i in layers)
            buckets.add(dense, 0.0)  # embedding / head / final norm
            buckets.flush()
        if vs > 0:
            dst = ctx.grid.pp_peer(rank.gpu, -1)
            rank.start(self._send(rank, dst, "send_gradient", ("B", q, mb, vs - 1)))


def pipeline_pass(
    ctx: SimContext, backward: bool = True, optimizer: bool = True, pipeline: Pipeline | None = None
) -> dict[int, simpy.Process]:
    """Start every simulated rank's program for one step; returns the processes."""
    p = ctx.parallel
    if backward and p.schedule == "dualpipe":
        from moesim.sim import dualpipe  # imports this module

        if effective_schedule(p, n_microbatches(ctx.scenario)) == "dualpipe":
            return dualpipe.start_dualpipe(ctx, optimizer, pipeline)
    pipe = pipeline or Pipeline(ctx)
    procs = {}
    for g in ctx.simulated_gpus():
        stage, _ = ctx.grid.coords(g)
        if backward:
            tasks = schedule(p.schedule, p.pp, ctx.microbatches, stage, p.virtual_stages)
        else:
            tasks = [
                Task("F", mb, c) for c in range(p.virtual_stages) for mb in range(ctx.microbatches)
            ]
        procs[g] = ctx.rank(g).start(_rank_program(ctx, pipe, g, tasks, backward, optimizer))
    return procs


def _rank_program(
    ctx: SimContext, pipe: Pipeline, gpu: int, tasks: list[Task], backward: bool, optimizer: bool
):
    rank = ctx.rank(gpu)
    stage, _ = ctx.grid.coords(gpu)
    p, sim = ctx.parallel, ctx.scenario.simulation
    train = backward and optimizer
    zero = p.zero_stage in (1, 2) and train  # ZeRO-3 gathers per layer (moesim.sim.zero3)
    ready: dict[int, simpy.Process] = {}
    if zero and sim.overlap_dp:
        for c in range(len(ctx.stages[stage].chunks)):
            dense, expert = stage_params_on_rank(ctx, stage, c)
            ready[c] = rank.start(param_all_gather(ctx, rank, dense, expert, ("pre", c)))
    buckets = GradBuckets(ctx, rank) if train and sim.overlap_dp else None
    ep_overlap = p.overlap_moe_expert_parallel_comm and p.schedule != "dualpipe" and backward
    if ep_overlap:  # Megatron-Core's EP overlap (moesim.sim.ep_overlap)
        tasks = overlap_order(tasks)
    i = 0
    while i < len(tasks):
        task = tasks[i]
        pair = (
            p.schedule == "dualpipe"
            and task.kind == "F"
            and i + 1 < len(tasks)
            and tasks[i + 1].kind == "B"
        ) or (ep_overlap and i + 1 < len(tasks) and overlaps(task, tasks[i + 1]))
        if pair:  # DualPipe's overlap where its layout does not apply, or Megatron's EP overlap
            from moesim.sim.dualpipe import pair_views

            fview, bview = pair_views(rank)
            a = rank.start(pipe.run_task(fview, task, buckets, ready))
            b = rank.start(pipe.run_task(bview, tasks[i + 1], buckets, ready))
            yield simpy.AllOf(ctx.env, [a, b])
            i += 2
            continue
        yield from pipe.run_task(rank, task, buckets, ready)
        i += 1
    if not train:
        return
    if buckets is None:  # no overlap: reduce everything after the backward
        buckets = GradBuckets(ctx, rank)
        dense, expert = stage_params_on_rank(ctx, stage)
        buckets.add(dense, expert)
        buckets.flush()
    if buckets.procs:
        yield simpy.AllOf(ctx.env, buckets.procs)
    yield from rank.compute_ops(optimizer_step_ops(ctx, stage), "optimizer")
    if zero and not sim.overlap_dp:
        dense, expert = stage_params_on_rank(ctx, stage)
        yield from param_all_gather(ctx, rank, dense, expert, ("post",))
