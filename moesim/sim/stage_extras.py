"""What a pipeline chunk runs besides its transformer layers: the embedding (the layout's
``E``), the MTP layers (``m``) and the LM head with the loss (``L``), on whichever rank and
chunk the layout puts them (``moesim.analytic.layout``)."""

from __future__ import annotations

from dataclasses import replace

from moesim.sim.context import SimContext
from moesim.sim.costmodel import OpWork
from moesim.sim.elementwise import cross_entropy
from moesim.sim.engine import Rank


def head_times_s(ctx: SimContext) -> tuple[float, float]:
    """LM head and the cross-entropy (the layout's ``L``): (forward, backward)."""
    m, p, prec = ctx.model, ctx.parallel, ctx.precision
    t = ctx.tokens
    logits_b = t * m.vocab_size / p.tp * 4  # fp32 logits
    head = OpWork(
        "lm_head",
        "gemm",
        t * ctx.flops.lm_head / p.tp,
        m.vocab_size * m.d_model / p.tp * prec.param_bytes + logits_b,
        kernels=2,
        fp8=False,
    )
    # Megatron's vocab-parallel cross-entropy over the fp32 logits (moesim.sim.elementwise)
    logits = t * m.vocab_size / p.tp
    fwd = ctx.cm.time_s(head) + ctx.cm.time_s(cross_entropy(logits))
    bwd_op = replace(
        head, name="lm_head_bwd", flops=2 * head.flops, bytes=2 * head.bytes, kernels=4
    )
    return fwd, ctx.cm.time_s(bwd_op) + ctx.cm.time_s(cross_entropy(logits, backward=True))


def mtp_times_s(ctx: SimContext, n_layers: int) -> tuple[float, float]:
    """``n_layers`` MTP modules (the layout's ``m``; DeepSeek-V3 §2.2: projection, one block,
    the shared head) with their cross-entropy: (forward, backward). The block runs as one GEMM
    of its FLOPs (no all-to-all of its own), as before the layout options."""
    if n_layers <= 0 or not ctx.model.mtp_depth:
        return 0.0, 0.0
    m, p, prec = ctx.model, ctx.parallel, ctx.precision
    t = ctx.tokens
    logits_b = t * m.vocab_size / p.tp * 4
    per_layer_flops = ctx.flops.mtp / m.mtp_depth
    op = OpWork(
        "mtp",
        "gemm",
        n_layers * t * per_layer_flops / p.tp,
        n_layers * (m.vocab_size * m.d_model / p.tp * prec.param_bytes + logits_b),
        kernels=2 * n_layers,
        fp8=False,
    )
    logits = n_layers * t * m.vocab_size / p.tp  # each MTP module's own cross-entropy
    loss = replace(cross_entropy(logits), name="mtp_cross_entropy")
    loss_bwd = replace(cross_entropy(logits, backward=True), name="mtp_cross_entropy_bwd")
    bwd_op = replace(op, name="mtp_bwd", flops=2 * op.flops, bytes=2 * op.bytes, kernels=4)
    fwd_s = ctx.cm.time_s(op) + ctx.cm.time_s(loss)
    return fwd_s, ctx.cm.time_s(bwd_op) + ctx.cm.time_s(loss_bwd)


def embedding_times_s(ctx: SimContext) -> tuple[float, float]:
    """The embedding lookup (the layout's ``E``): a gather of one row per token, and in the
    backward the scatter-add of the rows' gradients into the table's gradient (read and write).
    Memory-bound: (forward, backward)."""
    rows_b = ctx.tokens * ctx.model.d_model * ctx.precision.activation_bytes / ctx.parallel.tp
    fwd = ctx.cm.time_s(OpWork("embedding", "memory_bound", 0.0, 2 * rows_b, 1))
    bwd = ctx.cm.time_s(OpWork("embedding_bwd", "memory_bound", 0.0, 4 * rows_b, 1))
    return fwd, bwd


class StageExtras:
    """Forward and backward times of the embedding, MTP layers and head of each pipeline
    rank's chunks (where the layout puts them)."""

    def __init__(self, ctx: SimContext):
        self.ctx = ctx
        self.head_s = head_times_s(ctx)
        self.embedding_s = embedding_times_s(ctx)
        self.mtp_s = {st.rank: mtp_times_s(ctx, st.mtp_layers) for st in ctx.stages}

    def forward(self, rank: Rank, stage: int, chunk: int, first: bool):
        """Around a chunk's layers: ``first`` True before them, False after."""
        st = self.ctx.stages[stage]
        if first:
            if chunk == 0 and st.has_embedding:
                yield from rank.compute("embedding", self.embedding_s[0])
            return
        last = chunk == len(st.chunks) - 1
        if last and st.has_mtp:
            yield from rank.compute("mtp", self.mtp_s[stage][0])
        if last and st.has_lm_head:
            yield from rank.compute("lm_head", self.head_s[0])

    def backward(self, rank: Rank, stage: int, chunk: int, first: bool):
        """Around a chunk's layers' backward: ``first`` True before them, False after."""
        st = self.ctx.stages[stage]
        last = chunk == len(st.chunks) - 1
        if first:
            if last and st.has_lm_head:
                yield from rank.compute("lm_head_bwd", self.head_s[1])
            if last and st.has_mtp:
                yield from rank.compute("mtp_bwd", self.mtp_s[stage][1])
            return
        if chunk == 0 and st.has_embedding:
            yield from rank.compute("embedding_bwd", self.embedding_s[1])
