"""A plain layer's forward and backward as fixed op groups, built once per layer.

``LayerRunner`` (``moesim.sim.layer_runner``) composes a layer from its pieces on every call:
TP blocks, the context-parallel ring, ZeRO-3 gathers, offload, recomputation, the MoE block.
Most layers of a large run need none of that wrapping (tp = cp = etp = 1, no ZeRO-3, no
offload, no full or MoE-block recomputation), and a 2048-GPU DeepSeek-V3 step runs 1.4·10⁴ of
them. For those, the compute holds are built here once, each with its summed seconds, and
the pass issues them with the same ops, in the same order, on the same streams as the
general path: the step is bit for bit the same (tests/sim/test_layer_program.py), and the
program skips the per-call list building, the nested generators and the zero-time pieces.

Forward of an MoE layer (tp = 1: the attention shares the router's hold)::

    hold(attention, router, permute) ─► dispatch ‖ hold(shared experts) ─► hold(experts)
    ─► combine ─► hold(unpermute)            (shared experts after it without the overlap)

Backward::

    hold(unpermute_bwd) ─► combine_bwd ‖ hold(recompute, shared experts' backward)
    ─► hold(experts' backward) ─► dispatch_bwd ─► hold(router's and attention's backward)
"""

from __future__ import annotations

from typing import NamedTuple

from moesim.sim.context import SimContext
from moesim.sim.moe_layer import expert_ops

OpGroup = tuple[tuple[tuple[str, float], ...], float]  # (name, seconds) ops and their sum


def _group(*ops: tuple[str, float]) -> OpGroup:
    return ops, sum(d for _, d in ops)  # summed as Rank.compute_ops sums them


class LayerProgram(NamedTuple):
    """The fixed compute holds of one plain layer (forward, backward)."""

    is_moe: bool
    forward: OpGroup  # a dense layer's whole forward; an MoE layer's attention to permute
    backward: OpGroup  # a dense layer's whole backward; an MoE layer's router to attention
    shared: OpGroup = ((), 0.0)  # the shared experts' forward
    unpermute: OpGroup = ((), 0.0)
    overlap_forward: bool = False  # dispatch ‖ shared experts
    unpermute_bwd: OpGroup = ((), 0.0)
    lead_shared_bwd: OpGroup = ((), 0.0)  # recomputation with the shared experts' backward
    lead: OpGroup = ((), 0.0)  # the recomputation alone (without the overlap)
    shared_bwd: OpGroup = ((), 0.0)
    overlap_backward: bool = False  # combine_bwd ‖ shared experts' backward


def plain_layers(ctx: SimContext) -> bool:
    """Whether the layers of ``ctx`` run as ``LayerProgram``s. The backward of a layer whose
    MoE block is recomputed (``recompute_modules: [moe]``) still takes the general path, which
    reruns the block (``LayerRunner._recomputes_moe_block``)."""
    p = ctx.parallel
    return (
        p.tp == 1
        and p.cp == 1
        and p.etp == 1
        and p.zero_stage != 3
        and p.recompute != "full"
        and not p.activation_offload_layers
    )


def build_program(ctx: SimContext, layer: int) -> LayerProgram:
    lc = ctx.layers[layer]
    lead = tuple(lc.recompute_ops) if ctx.parallel.recompute == "selective" else ()
    attention = (*lc.attention_elementwise, ("attention", lc.attention_s), *lc.ffn_elementwise)
    attention_bwd = (
        *lc.ffn_elementwise_bwd,
        ("attention_bwd", lc.attention_bwd_s),
        *lc.attention_elementwise_bwd,
    )
    if not lc.is_moe:
        return LayerProgram(
            False,
            _group(*attention, ("ffn", lc.ffn_s), *lc.ffn_act),
            _group(*lead, ("ffn_bwd", lc.ffn_bwd_s), *lc.ffn_act_bwd, *attention_bwd),
        )
    overlap = ctx.scenario.simulation.overlap_shared_experts
    shared_bwd = (("shared_experts_bwd", lc.ffn_bwd_s), *lc.ffn_act_bwd)
    return LayerProgram(
        True,
        _group(*attention, ("router", lc.router_s), *lc.router_elementwise, *lc.permute),
        _group(
            *lc.permute_bwd,
            *lc.router_elementwise_bwd,
            ("router_bwd", lc.router_bwd_s),
            *attention_bwd,
        ),
        shared=_group(("shared_experts", lc.ffn_s), *lc.ffn_act),
        unpermute=_group(*lc.unpermute),
        overlap_forward=overlap and lc.ffn_s > 0,
        unpermute_bwd=_group(*lc.unpermute_bwd),
        lead_shared_bwd=_group(*lead, *shared_bwd),
        lead=_group(*lead),
        shared_bwd=_group(*shared_bwd),
        overlap_backward=overlap and lc.ffn_bwd_s > 0,
    )


def _hold(rank, group: OpGroup):
    return rank.compute_ops(group[0], "compute", total_s=group[1])


def forward(ctx: SimContext, rank, prog: LayerProgram, layer: int, mb: int, draw):
    """One plain layer's forward for microbatch ``mb`` (``draw``: its MoE load)."""
    if not prog.is_moe:
        yield from _hold(rank, prog.forward)
        return
    group = ctx.ep_group(rank.gpu)
    link, n, key = ctx.link_of(group), len(group), ctx.group_key
    yield from _hold(rank, prog.forward)
    tag = (layer, mb, "f")
    dispatch = rank.comm(
        "ep", "dispatch", "all_to_all", draw.dispatch_s, link, key(group, "dispatch", *tag), n
    )
    if prog.overlap_forward:
        proc = rank.issue(dispatch)
        yield from _hold(rank, prog.shared)
        yield proc
    else:
        yield from dispatch
    yield from rank.compute_ops(expert_ops(ctx, draw, False))
    yield from rank.comm(
        "ep", "combine", "all_to_all", draw.combine_s, link, key(group, "combine", *tag), n
    )
    if prog.unpermute[1] > 0:
        yield from _hold(rank, prog.unpermute)
    if not prog.overlap_forward and prog.shared[1] > 0:
        yield from _hold(rank, prog.shared)


def backward(ctx: SimContext, rank, prog: LayerProgram, layer: int, mb: int, draw):
    """One plain layer's backward for microbatch ``mb``."""
    if not prog.is_moe:
        yield from _hold(rank, prog.backward)
        return
    group = ctx.ep_group(rank.gpu)
    link, n, key = ctx.link_of(group), len(group), ctx.group_key
    tag = (layer, mb, "b")
    combine_bwd = rank.comm(
        "ep", "combine_bwd", "all_to_all", draw.dispatch_s, link, key(group, "combine_bwd", *tag), n
    )
    if prog.unpermute_bwd[1] > 0:
        yield from _hold(rank, prog.unpermute_bwd)
    if prog.overlap_backward:
        proc = rank.issue(combine_bwd)
        yield from _hold(rank, prog.lead_shared_bwd)
        yield proc
    else:
        if prog.lead[1] > 0:
            yield from _hold(rank, prog.lead)
        if prog.shared_bwd[1] > 0:
            yield from _hold(rank, prog.shared_bwd)
        yield from combine_bwd
    yield from rank.compute_ops(expert_ops(ctx, draw, True))
    yield from rank.comm(
        "ep",
        "dispatch_bwd",
        "all_to_all",
        draw.combine_s,
        link,
        key(group, "dispatch_bwd", *tag),
        n,
    )
    yield from _hold(rank, prog.backward)
