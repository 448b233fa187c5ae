"""The MoE block of one layer on one rank, forward and backward, as SimPy processes.

Forward (Megatron-Core / DeepEP order)::

    router, top-k, permute ─► dispatch all-to-all (ep stream) ─► experts ─► combine ─► unpermute
                 └─ shared experts on the compute stream, while the dispatch is in flight
                    (``simulation.overlap_shared_experts``; otherwise after the combine)

The element-wise kernels around it (``moesim.sim.elementwise``): the router's score and top-k
with the router GEMM, the permutation of the rank's tokens into expert order before the
dispatch and their unpermutation (the weighted sum of the k copies) after the combine, the
routed experts' activation and the sort of received rows by local expert with the experts.

Backward mirrors it: the combine's backward is a dispatch of gradients to the experts (with the
shared experts' backward overlapping it), the experts' backward, then the dispatch's backward
(a combine), then the router's backward. The all-to-alls are timed by ``SimContext.moe_draw``:
under symmetric fidelity the most loaded rank of the EP group sets the expert time and stretches
the all-to-all (its links carry the most), under full fidelity every rank has its own load and
the rendezvous makes everyone wait for the slowest. Which dispatcher moves the tokens (and so
the all-to-all's bytes) is ``parallel.moe_dispatcher`` (``moesim.sim.dispatch_traffic``);
while a dispatch or combine runs, compute that starts on the rank is slowed by the SMs the
dispatcher's kernels hold (``moesim.sim.engine``).

Expert tensor parallelism (etp > 1, Megatron-Core's MoE Parallel Folding): the etp ranks that
shard the same experts each receive their own dispatch, all-gather the group's tokens before the
expert GEMMs (each then runs all of them on its 1/etp of the weights) and reduce-scatter the
outputs after; the backward does the reverse (all-gather of output gradients, reduce-scatter of
input gradients). These run on the tp stream and count as ``tp_comm``.
"""

from __future__ import annotations

from moesim.sim.context import SimContext
from moesim.sim.engine import Rank
from moesim.sim.layer_costs import LayerCosts


def moe_forward(
    ctx: SimContext,
    rank: Rank,
    lc: LayerCosts,
    tag: tuple,
    draw,
    tp_block,
    lead: list[tuple[str, float]] = (),
):
    """Router, dispatch ‖ shared experts, experts, combine. ``tp_block`` wraps the shared
    experts in their TP collectives; ``lead`` are compute ops to run in the router's hold."""
    group = ctx.ep_group(rank.gpu)
    link = ctx.link_of(group)
    yield from rank.compute_ops(
        [*lead, ("router", lc.router_s), *lc.router_elementwise, *lc.permute]
    )
    overlap = ctx.scenario.simulation.overlap_shared_experts and lc.ffn_s > 0
    dispatch = rank.comm(
        "ep",
        "dispatch",
        "all_to_all",
        draw.dispatch_s,
        link,
        ctx.group_key(group, "dispatch", *tag),
        len(group),
    )
    shared = [("shared_experts", lc.ffn_s), *lc.ffn_act]
    if overlap:
        proc = rank.issue(dispatch)
        yield from tp_block(rank, shared, tag)
        yield proc
    else:
        yield from dispatch
    yield from _etp_collective(ctx, rank, "etp_all_gather", draw, tag)
    yield from rank.compute_ops(expert_ops(ctx, draw, False))
    yield from _etp_collective(ctx, rank, "etp_reduce_scatter", draw, tag)
    yield from rank.comm(
        "ep",
        "combine",
        "all_to_all",
        draw.combine_s,
        link,
        ctx.group_key(group, "combine", *tag),
        len(group),
    )
    yield from rank.compute_ops(list(lc.unpermute))
    if not overlap:
        yield from tp_block(rank, shared, tag)


def moe_backward(
    ctx: SimContext,
    rank: Rank,
    lc: LayerCosts,
    tag: tuple,
    draw,
    tp_block,
    lead: list[tuple[str, float]] = (),
    trail: list[tuple[str, float]] = (),
):
    """Combine-backward ‖ shared experts' backward, experts' backward, dispatch-backward,
    router's backward. ``lead`` (recomputation) runs with the shared experts' backward,
    ``trail`` (the attention's backward at tp = 1) in the router's hold."""
    group = ctx.ep_group(rank.gpu)
    link = ctx.link_of(group)
    overlap = ctx.scenario.simulation.overlap_shared_experts and lc.ffn_bwd_s > 0
    # the combine's backward sends output gradients to the experts: a dispatch, in the
    # dispatch's precision (DeepSeek-V3 §3.3: the activation gradient before the MoE
    # down-projections goes in fp8); the dispatch's backward is a combine, in the combine's
    combine_bwd = rank.comm(
        "ep",
        "combine_bwd",
        "all_to_all",
        draw.dispatch_s,
        link,
        ctx.group_key(group, "combine_bwd", *tag),
        len(group),
    )
    shared = [("shared_experts_bwd", lc.ffn_bwd_s), *lc.ffn_act_bwd]
    # the output gradient copied to the k expert copies before it travels back
    yield from rank.compute_ops(list(lc.unpermute_bwd))
    if overlap:
        proc = rank.issue(combine_bwd)
        if ctx.parallel.tp == 1:
            yield from rank.compute_ops([*lead, *shared])
        else:
            yield from rank.compute_ops(list(lead))
            yield from tp_block(rank, shared, tag)
        yield proc
    else:
        yield from rank.compute_ops(list(lead))
        yield from tp_block(rank, shared, tag)
        yield from combine_bwd
    yield from _etp_collective(ctx, rank, "etp_all_gather_bwd", draw, tag)
    yield from rank.compute_ops(expert_ops(ctx, draw, True))
    yield from _etp_collective(ctx, rank, "etp_reduce_scatter_bwd", draw, tag)
    yield from rank.comm(
        "ep",
        "dispatch_bwd",
        "all_to_all",
        draw.combine_s,
        link,
        ctx.group_key(group, "dispatch_bwd", *tag),
        len(group),
    )
    router = [*lc.permute_bwd, *lc.router_elementwise_bwd, ("router_bwd", lc.router_bwd_s)]
    yield from rank.compute_ops([*router, *trail])


def expert_ops(ctx: SimContext, draw, backward: bool) -> list[tuple[str, float]]:
    """The routed experts' GEMMs and their element-wise kernels for the copies the rank
    processes (a ``VectorDraw`` brings them per member, ``moesim.sim.vector_engine``)."""
    per_member = getattr(draw, "expert_ops", None)
    if per_member is not None:
        return per_member(backward)
    copies = _etp_copies(ctx, draw)
    if backward:
        return [
            *ctx.expert_elementwise.ops(copies, True),
            ("experts_bwd", ctx.expert_cost.time_s(copies, True)),
        ]
    return [("experts", ctx.expert_cost.time_s(copies)), *ctx.expert_elementwise.ops(copies)]


def _etp_copies(ctx: SimContext, draw) -> float:
    """Copies one rank's expert shards process: its own and, gathered, its etp peers'."""
    return draw.expert_copies * ctx.parallel.etp


def _etp_collective(ctx: SimContext, rank: Rank, name: str, draw, tag: tuple):
    """All-gather (tokens in, or output gradients) or reduce-scatter (outputs, or input
    gradients) of the dispatched rows over the expert-TP group; nothing at etp = 1."""
    etp = ctx.parallel.etp
    if etp == 1:
        return
    group = ctx.grid.etp_group(rank.gpu)
    buffer_B = _etp_copies(ctx, draw) * ctx.model.d_model * ctx.precision.activation_bytes
    if "all_gather" in name:
        alone_s = ctx.all_gather_s(group, buffer_B)
    else:
        alone_s = ctx.reduce_scatter_s(group, buffer_B)
    yield from rank.comm(
        "tp", name, "tp_comm", alone_s, ctx.link_of(group), ctx.group_key(group, name, *tag), etp
    )
