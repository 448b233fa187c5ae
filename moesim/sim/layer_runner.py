"""One transformer layer for one microbatch on one rank, forward and backward, as SimPy
processes: its TP collectives (``tp_block_factory``), its context-parallel ring exchange
(``cp_ring_factory``), its MoE block (``moesim.sim.moe_layer``) and recomputation
(``LayerRunner``). Pipeline schedules (``training_step``, ``dualpipe``) and post-training
stages run layers through it.
"""

from __future__ import annotations

import simpy

from moesim.analytic.comm import cp_kv_bytes_per_token
from moesim.sim import layer_program
from moesim.sim.activation_offload import ActivationOffload
from moesim.sim.context import SimContext
from moesim.sim.engine import Rank
from moesim.sim.moe_layer import moe_backward, moe_forward
from moesim.sim.zero3 import Zero3Gather


# -- one layer ----------------------------------------------------------------------------------
def tp_block_factory(ctx: SimContext):
    """Compute ops wrapped in their TP collectives (Megatron SP: all-gather before,
    reduce-scatter after; without SP one all-reduce after). Plain compute at tp = 1."""
    p = ctx.parallel
    buffer = ctx.tokens * ctx.model.d_model * ctx.precision.activation_bytes

    def block(rank: Rank, ops: list[tuple[str, float]], tag: tuple = ()):
        if p.tp == 1 or sum(d for _, d in ops) <= 0:
            return rank.compute_ops(ops)  # the plain hold's generator itself: one frame less
        return wrapped(rank, ops, tag)

    def wrapped(rank: Rank, ops: list[tuple[str, float]], tag: tuple):
        group = ctx.grid.tp_group(rank.gpu)
        link = ctx.link_of(group)
        key = ctx.group_key
        name = ops[0][0]
        if p.sequence_parallel:
            before = ctx.all_gather_s(group, buffer)
            after = ctx.reduce_scatter_s(group, buffer)
        else:
            before, after = 0.0, ctx.all_reduce_s(group, buffer)
        pre = rank.comm(
            "tp", "tp_all_gather", "tp_comm", before, link, key(group, name, "ag", *tag), len(group)
        )
        post = rank.comm(
            "tp", "tp_reduce", "tp_comm", after, link, key(group, name, "rs", *tag), len(group)
        )
        if ctx.scenario.simulation.overlap_tp:
            procs = [rank.start(pre), rank.start(post)]
            yield from rank.compute_ops(ops)
            yield simpy.AllOf(ctx.env, procs)
        else:
            yield from pre
            yield from rank.compute_ops(ops)
            yield from post

    return block


CP_FORWARD = ("cp_kv_all_gather",)
CP_BACKWARD = ("cp_kv_all_gather_bwd", "cp_dkv_reduce_scatter")


def cp_ring_factory(ctx: SimContext):
    """Ring attention's K/V exchange around a layer's attention (context parallelism); None at
    cp = 1.

    Each of the cp ranks of a sequence holds one K/V chunk and passes it around the ring while
    it computes on the chunk it already holds (Liu et al. 2023; Megatron-Core CP), so a rank
    receives the other cp−1 chunks: the traffic of an all-gather of the cp·chunk buffer
    (``CP_FORWARD``). The backward passes K/V around again and dK/dV back to their owners: an
    all-gather plus a reduce-scatter of the same buffer (``CP_BACKWARD``); a fully recomputed
    layer runs its forward ring again. With ``simulation.overlap_cp``
    the exchange runs on the ``cp`` stream during the attention and the layer goes on when
    both are done; without it the exchange comes first."""
    p = ctx.parallel
    if p.cp == 1:
        return None
    per_token_b = cp_kv_bytes_per_token(ctx.model, p, ctx.precision.activation_bytes)
    buffer_b = p.cp * ctx.tokens * per_token_b  # all chunks: the collectives' buffer convention
    overlap = ctx.scenario.simulation.overlap_cp
    rings: dict[int, tuple] = {}  # gpu -> (group, link, all-gather s, reduce-scatter s)

    def exchange(rank: Rank, names: tuple[str, ...], tag: tuple):
        ring = rings.get(rank.gpu)
        if ring is None:
            group = ctx.grid.cp_group(rank.gpu)
            ring = rings[rank.gpu] = (
                group,
                ctx.link_of(group),
                ctx.ring_exchange_s(group, buffer_b, "all_gather"),
                ctx.ring_exchange_s(group, buffer_b, "reduce_scatter"),
            )
        group, link, gather_s, scatter_s = ring
        for name in names:
            t = scatter_s if name.endswith("reduce_scatter") else gather_s
            key = ctx.group_key(group, name, *tag)
            yield from rank.comm("cp", name, "cp_comm", t, link, key, len(group))

    def around(rank: Rank, attention, tag: tuple, names: tuple[str, ...]):
        """Run the ``attention`` process (a generator) with the ring exchanges ``names``."""
        if overlap:
            ring = rank.start(exchange(rank, names, tag))
            yield from attention
            yield ring
        else:
            yield from exchange(rank, names, tag)
            yield from attention

    return around


class LayerRunner:
    """Forward and backward of any layer of the model on any rank.

    At tp = 1 consecutive kernels share one hold of the compute stream (attention with the
    router or the dense FFN, recomputation with the shared experts' backward, the router's
    backward with the attention's), which keeps the event count near one per op group. At
    cp > 1 the attention (with its recomputation in the backward) runs on its own, around its
    ring exchange, and the rest of the layer as at cp = 1 without it."""

    def __init__(self, ctx: SimContext):
        self.ctx = ctx
        self.tp_block = tp_block_factory(ctx)
        self.cp_ring = cp_ring_factory(ctx)
        self.zero3 = Zero3Gather(ctx) if ctx.parallel.zero_stage == 3 else None
        self.moe_pos: dict[tuple[int, int], tuple[int, int]] = {}
        for st in ctx.stages:
            for j, layer in enumerate(st.moe_layers):
                self.moe_pos[(st.rank, layer)] = (j, len(st.moe_layers))
        self.offload = ActivationOffload(ctx)
        # the layers that run as fixed programs (``moesim.sim.layer_program``), by index
        self.programs: dict[int, layer_program.LayerProgram] = {}
        if layer_program.plain_layers(ctx):
            for i in range(len(ctx.layers)):
                self.programs[i] = layer_program.build_program(ctx, i)

    def _draw(self, rank: Rank, layer: int, mb: int):
        stage = self.ctx.grid.coords(rank.gpu)[0]
        j, n = self.moe_pos[(stage, layer)]
        return self.ctx.moe_draw(rank.gpu, j, mb, n)

    def _attention(self, rank: Rank, ops: list[tuple[str, float]], tag: tuple, lead=()):
        """``lead`` compute ops, then the attention ``ops`` in their TP collectives."""
        if self.ctx.parallel.tp == 1:
            yield from rank.compute_ops([*lead, *ops])
        else:
            yield from rank.compute_ops(list(lead))
            yield from self.tp_block(rank, ops, tag)

    def forward(self, rank: Rank, layer: int, mb: int, recompute: bool = False):
        prog = self.programs.get(layer)
        if prog is not None and not recompute:
            draw = self._draw(rank, layer, mb) if prog.is_moe else None
            return layer_program.forward(self.ctx, rank, prog, layer, mb, draw)
        return self._forward(rank, layer, mb, recompute)

    def _forward(self, rank: Rank, layer: int, mb: int, recompute: bool):
        lc = self.ctx.layers[layer]
        tag = (layer, mb, "r" if recompute else "f")
        if self.zero3 is not None and not recompute:
            yield from self.zero3.before(rank, layer, mb, "f")
        attention = [
            *lc.attention_elementwise,
            ("attention", lc.attention_s),
            *lc.ffn_elementwise,
        ]
        single = self.ctx.parallel.tp == 1
        if self.cp_ring is not None:
            yield from self.cp_ring(rank, self._attention(rank, attention, tag), tag, CP_FORWARD)
            attention = []
        if lc.is_moe:
            draw = self._draw(rank, layer, mb)
            if not single:
                yield from self.tp_block(rank, attention, tag)
            lead = attention if single else []
            yield from moe_forward(self.ctx, rank, lc, tag, draw, self.tp_block, lead)
        elif single:
            yield from rank.compute_ops([*attention, ("ffn", lc.ffn_s), *lc.ffn_act])
        else:
            yield from self.tp_block(rank, attention, tag)
            yield from self.tp_block(rank, [("ffn", lc.ffn_s), *lc.ffn_act], tag)
        if not recompute:
            self.offload.after_forward(rank, layer, mb)

    def backward(self, rank: Rank, layer: int, mb: int):
        prog = self.programs.get(layer)
        if prog is not None and not self._recomputes_moe_block(layer):
            draw = self._draw(rank, layer, mb) if prog.is_moe else None
            return layer_program.backward(self.ctx, rank, prog, layer, mb, draw)
        return self._backward(rank, layer, mb)

    def _recomputes_moe_block(self, layer: int) -> bool:
        return (
            self.ctx.layers[layer].recompute_moe_block
            and self.ctx.parallel.recompute == "selective"
        )

    def _backward(self, rank: Rank, layer: int, mb: int):
        if self.offload.layers:
            yield from self.offload.before_backward(rank, layer, mb)
        lc = self.ctx.layers[layer]
        mode = self.ctx.parallel.recompute
        tag = (layer, mb, "b")
        single = self.ctx.parallel.tp == 1
        if self.zero3 is not None:
            yield from self.zero3.before(rank, layer, mb, "b")
        if mode == "full":
            yield from self.forward(rank, layer, mb, recompute=True)
        lead = list(lc.recompute_ops) if mode == "selective" else []
        attention = [
            *lc.ffn_elementwise_bwd,
            ("attention_bwd", lc.attention_bwd_s),
            *lc.attention_elementwise_bwd,
        ]
        ring_attention = None
        if self.cp_ring is not None:
            # after the FFN's backward, as autograd reaches the attention only there; the
            # selective recomputation (norms, activations, MLA's up-projection) is local and
            # stays ahead of the FFN's backward
            ring_attention = self.cp_ring(
                rank, self._attention(rank, attention, tag), tag, CP_BACKWARD
            )
            attention = []
        if lc.is_moe:
            draw = self._draw(rank, layer, mb)
            trail = attention if single else []
            if lc.recompute_moe_block and mode == "selective":  # recompute_modules: [moe]
                rtag = (layer, mb, "r")
                yield from moe_forward(self.ctx, rank, lc, rtag, draw, self.tp_block, lead)
                lead = []
            yield from moe_backward(self.ctx, rank, lc, tag, draw, self.tp_block, lead, trail)
            if not single:
                yield from self.tp_block(rank, attention, tag)
        elif single:
            ffn = [("ffn_bwd", lc.ffn_bwd_s), *lc.ffn_act_bwd]
            yield from rank.compute_ops([*lead, *ffn, *attention])
        else:
            yield from rank.compute_ops(lead)
            yield from self.tp_block(rank, [("ffn_bwd", lc.ffn_bwd_s), *lc.ffn_act_bwd], tag)
            yield from self.tp_block(rank, attention, tag)
        if ring_attention is not None:
            yield from ring_attention
