"""Gradients and the optimizer of a training step: ``GradBuckets`` reduce the last
backward's gradients in buckets on the ``dp`` stream while the backward goes on (Megatron's
overlapped grad reduce; non-expert gradients over the dp·cp group, expert gradients over the
expert-data-parallel group), ``optimizer_step_ops`` are the optimizer's memory-bound passes over
the rank's shard, and ``param_all_gather`` gathers updated shards back under ZeRO ≥ 1.
"""

from __future__ import annotations

import simpy

from moesim.sim.context import SimContext
from moesim.sim.engine import Rank
from moesim.sim.optimizer_step import layer_param_tensors, optimizer_ops


# -- gradients and optimizer --------------------------------------------------------------------
class GradBuckets:
    """Gradient buckets of one rank: filled layer by layer in the last backward, each reduced on
    the ``dp`` stream as soon as it is full (``simulation.dp_bucket_MB``)."""

    def __init__(self, ctx: SimContext, rank: Rank):
        self.ctx, self.rank = ctx, rank
        self.size_bytes = ctx.scenario.simulation.dp_bucket_MB * 1e6
        self.pending = {"dense": 0.0, "expert": 0.0}
        self.procs: list[simpy.Process] = []
        self.count = 0

    def add(self, non_expert_params: float, expert_params: float) -> None:
        gb = self.ctx.precision.grad_bytes
        self.pending["dense"] += non_expert_params * gb
        self.pending["expert"] += expert_params * gb
        for kind in ("dense", "expert"):
            if self.pending[kind] >= self.size_bytes:
                self._launch(kind)

    def flush(self) -> None:
        for kind in ("dense", "expert"):
            if self.pending[kind] > 0:
                self._launch(kind)

    def _launch(self, kind: str) -> None:
        ctx, g = self.ctx, self.rank.gpu
        nbytes, self.pending[kind] = self.pending[kind], 0.0
        group = ctx.dp_group(g) if kind == "dense" else ctx.edp_group(g)
        if len(group) == 1:
            return
        zero = ctx.parallel.zero_stage >= 1
        t = ctx.reduce_scatter_s(group, nbytes) if zero else ctx.all_reduce_s(group, nbytes)
        self.count += 1
        name = f"grad_{'reduce_scatter' if zero else 'all_reduce'}_{kind}"
        key = ctx.group_key(group, "grad", kind, self.count)
        self.procs.append(
            self.rank.start(
                self.rank.comm("dp", name, "dp_comm", t, ctx.link_of(group), key, len(group))
            )
        )


def stage_params_on_rank(
    ctx: SimContext, stage: int, chunk: int | None = None
) -> tuple[float, float]:
    """(non-expert, expert) parameters one rank of ``stage`` holds (one chunk, or all)."""
    st = ctx.stages[stage]
    chunks = st.chunks if chunk is None else [st.chunks[chunk]]
    dense = sum(ctx.layers[i].non_expert_params for c in chunks for i in c)
    expert = sum(ctx.layers[i].expert_params for c in chunks for i in c)
    c = ctx.counts
    if st.has_embedding and (chunk is None or chunk == 0):
        dense += c.embedding / ctx.parallel.tp
    last = chunk is None or chunk == len(st.chunks) - 1
    if st.has_lm_head and last:
        dense += (c.lm_head + c.final_norm) / ctx.parallel.tp
    if st.has_mtp and last:
        dense += c.mtp * st.mtp_layers / ctx.model.mtp_depth / ctx.parallel.tp
        if not st.has_lm_head:  # its own copy of the head (analytic.memory.stage_params)
            dense += c.lm_head / ctx.parallel.tp
    return dense, expert


def param_all_gather(ctx: SimContext, rank: Rank, dense: float, expert: float, tag: tuple):
    """ZeRO ≥ 1: updated parameter shards gathered back (bf16), dense and expert groups."""
    pb = ctx.precision.param_bytes
    for kind, n, group in (
        ("dense", dense, ctx.dp_group(rank.gpu)),
        ("expert", expert, ctx.edp_group(rank.gpu)),
    ):
        if n <= 0 or len(group) == 1:
            continue
        t = ctx.all_gather_s(group, n * pb)
        yield from rank.comm(
            "dp",
            f"param_all_gather_{kind}",
            "dp_comm",
            t,
            ctx.link_of(group),
            ctx.group_key(group, "pag", kind, *tag),
            len(group),
        )


def optimizer_step_ops(ctx: SimContext, stage: int) -> list[tuple[str, float]]:
    """The optimizer's passes over this rank's shard (``moesim.sim.optimizer_step``): gradients
    to fp32, their norm, Adam, the 16-bit weights written back; (name, seconds) each."""
    dense, expert = stage_params_on_rank(ctx, stage)
    m, p = ctx.model, ctx.parallel
    local = m.moe.n_routed_experts // p.ep if m.moe is not None else 0
    st = ctx.stages[stage]
    tensors = sum(layer_param_tensors(m, ctx.layers[i].is_moe, local) for c in st.chunks for i in c)
    tensors += 2 if st.has_embedding else 0  # word embedding (+ its norm-free head on this stage)
    tensors += 2 if st.has_lm_head else 0  # final norm, output layer
    ops = optimizer_ops(ctx.precision, p, dense, expert, tensors)
    return [(op.name, ctx.cm.time_s(op)) for op in ops]


def optimizer_time_s(ctx: SimContext, stage: int) -> float:
    """Seconds of the optimizer step of a rank of ``stage`` (``optimizer_step_ops``)."""
    return sum(t for _, t in optimizer_step_ops(ctx, stage))
