"""A training step as SimPy processes: layers, pipeline passes, gradient buckets, optimizer.

Reusable pieces (post-training stages compose them):

- ``LayerRunner.forward`` / ``.backward``: one transformer layer for one microbatch on one
  rank, with its TP collectives, its context-parallel ring exchange, its MoE block and
  recomputation.
- ``pipeline_pass(ctx, backward=...)``: every simulated rank runs its schedule's tasks, waiting
  for activations (and gradients) from its pipeline neighbours; ``backward=False`` is a
  forward-only pass (a reference model's log-probs, a reward model, prefill).
- ``GradBuckets``: gradients of the last microbatch's backward are reduced in buckets on the
  ``dp`` stream while the backward goes on (Megatron's overlapped grad reduce), non-expert
  gradients over the dp·cp group, expert gradients over the expert-data-parallel group.
- ``optimizer_step_ops``: the optimizer's memory-bound passes over the rank's shard (gradients
  to fp32, their norm, Adam, weights written back: ``moesim.sim.optimizer_step``) and, under
  ZeRO ≥ 1, the parameter all-gather (overlapped with the next step's forward when
  ``overlap_dp``: it is then issued at the start of the step and the first forward of each
  chunk waits for its shard).
"""

from __future__ import annotations

import simpy

from moesim.analytic.comm import cp_kv_bytes_per_token, pp_send_bytes
from moesim.analytic.microbatches import effective_schedule, n_microbatches
from moesim.sim.activation_offload import ActivationOffload
from moesim.sim.context import SimContext
from moesim.sim.engine import Rank
from moesim.sim.ep_overlap import overlap_order, overlaps
from moesim.sim.moe_layer import moe_backward, moe_forward
from moesim.sim.optimizer_step import layer_param_tensors, optimizer_ops
from moesim.sim.schedules import Task, schedule
from moesim.sim.stage_extras import StageExtras
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
