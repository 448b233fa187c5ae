"""How a serving engine runs one step of a replica: the plain forward of ``ReplicaCost``,
pipelined over pp stages (``moesim.sim.serving_pipeline``), split in two overlapped
micro-batches (``moesim.sim.two_batch_overlap``), and speculative (``moesim.sim.speculative``).

With pp > 1 a step of the scheduler is a round of pp micro-batches in flight, as vLLM V1's batch
queue runs them (``max_concurrent_batches`` = pp scheduled batches, each with its own token
budget; vllm/v1/engine/core.py ``step_with_batch_queue``; the virtual engines of vLLM RFC
#11945 and TensorRT-LLM likewise keep every stage busy): decodes, prompt chunks and mixed
steps alike, speculative verifies too. The round's work is split into micro-batches
(``split_round``: under vllm_v1 each request's work rides the micro-batch of its cohort, given
by the scheduler as ``Cohorts``; without cohorts, decodes and verifies evenly; chunks up to
``batch_tokens`` each) and the round lasts as long as the longest traversal of one of them or
the slowest stage's work over all of them (``round_s``). So a decode round of B sequences is
the traversal of a micro-batch of ⌈B/pp⌉ when the cohorts are even (or the last stage's pp
micro-batches with its LM head, when that is longer) and of all B when a burst put them in one
cohort; a prefill-heavy round runs pp batches of prompt tokens in about one traversal, and a
lone request's prompt pays its whole traversal (TTFT exactly the unpipelined step's).

Speculative decoding: a decode round of ``decode_s`` (prefill_first, the whole-sequence decode
server) verifies every sequence's k drafts (tokens per step expected); vllm_v1 steps pass their
drawn ``verifies`` (offset, q) to ``mixed_s``, a step of full verifies alone being such a round.
Each micro-batch's traversal adds the drafter's passes over its sequences and chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moesim.sim.serving_pipeline import Cohorts, MicroBatch, round_s, split_round
from moesim.sim.speculative import Speculator
from moesim.sim.two_batch_overlap import split_batch, split_chunks, tbo_step_s
from moesim.specs.engine import DEFAULT_MAX_PREFILL_TOKENS
from moesim.specs.scenario import draft_scenario


def step_token_budget(s) -> int:
    """Tokens the scheduler may place in one step of a replica of ``s``: one batch's
    ``max_prefill_tokens`` (vLLM's max_num_batched_tokens, a budget per ``schedule()`` call)
    for each of the pp batches of a round in flight."""
    return s.workload.max_prefill_tokens * s.parallel.pp


@dataclass
class EngineStep:
    """Step times of one replica (``cost``: a ``ReplicaCost``) as the engine runs them."""

    cost: object
    pp: int = 1
    two_batch_overlap: bool = False
    moe_layer_fraction: float = 0.0  # MoE layers / decoder layers (what TBO overlaps)
    sm_slowdown: float = 1.0  # compute under a DeepEP normal transfer (prefill)
    speculator: Speculator | None = None
    decode_cost: object = None  # decode steps' replica cost when their dispatcher differs
    decode_sm_slowdown: float | None = None  # the decode dispatcher's (default sm_slowdown)
    batch_tokens: int = DEFAULT_MAX_PREFILL_TOKENS  # one micro-batch's token budget (pp > 1)

    def __post_init__(self) -> None:
        if self.decode_cost is None:
            self.decode_cost = self.cost
        if self.decode_sm_slowdown is None:
            self.decode_sm_slowdown = self.sm_slowdown

    @property
    def tokens_per_step(self) -> float:
        """Expected tokens a decode round gives each running sequence."""
        return 1.0 if self.speculator is None else self.speculator.tokens_per_step

    def decode_microbatch(self, batch: int) -> int:
        """Sequences of the largest micro-batch of a decode round (⌈B/pp⌉)."""
        return math.ceil(batch / self.pp) if batch else 0

    def decode_forward(self, batch: int, context_sum: float):
        """The StepCost of the target's forward of one decode (or verify) micro-batch."""
        if self.speculator is not None:
            return self.speculator.verify(batch, context_sum)
        return self.decode_cost.decode(batch, context_sum)

    def _decode_forward_s(self, batch: int, context_sum: float) -> float:
        full = self.decode_forward(batch, context_sum)
        if not self.two_batch_overlap or batch < 2:
            return full.total_s
        (a, ca), (b, cb) = split_batch(batch, context_sum)
        return tbo_step_s(
            full,
            self.decode_forward(a, ca),
            self.decode_forward(b, cb),
            self.moe_layer_fraction,
            self.decode_sm_slowdown,
        )

    # -- one micro-batch's traversal of every stage ---------------------------------------------
    def _is_decode_round(self, mb: MicroBatch) -> bool:
        """Decodes alone, each a plain token (no drafter) or a full verify of its drafts."""
        return not mb.chunks and not mb.verifies and (self.speculator is None or mb.speculative)

    def _traversal_s(self, mb: MicroBatch) -> float:
        """Seconds of one micro-batch through every stage: a decode (or verify and draft) pass,
        a prefill of prompt chunks, or vLLM V1's mix of decodes, verifies and chunks
        (``ReplicaCost.mixed_step``); with two-batch overlap, split into halves; speculative,
        with the drafter's passes over its verified sequences and chunks."""
        d, ctx, chunks, fin = mb.decodes, mb.context_sum, list(mb.chunks), mb.finished
        verifies = list(mb.verifies)
        if self._is_decode_round(mb):
            return self._decode_forward_s(d, ctx) + self._draft_s(d, ctx, [], 0)
        if not d and not verifies:
            return self._prefill_forward_s(chunks, fin) + self._draft_s(0, 0.0, chunks, fin)
        full = self.cost.mixed_step(d, ctx, chunks, fin, verifies)
        forward = full.total_s
        if self.two_batch_overlap:
            (da, ca), (db, cb) = split_batch(d, ctx)
            a, b = split_chunks(chunks) if chunks else ([], [])
            fa = min(fin, len(a))
            half = (len(verifies) + 1) // 2
            va, vb = verifies[:half], verifies[half:]
            forward = tbo_step_s(
                full,
                self.cost.mixed_step(da, ca, a, fa, va),
                self.cost.mixed_step(db, cb, b, fin - fa, vb),
                self.moe_layer_fraction,
                self.sm_slowdown,
            )
        vctx = float(sum(o + 1 for o, _ in verifies))
        return forward + self._draft_s(len(verifies), vctx, chunks, fin)

    def _prefill_forward_s(self, chunks: list[tuple[int, int]], finished: int) -> float:
        full = self.cost.prefill_chunks(chunks, finished)
        tokens = sum(c for _, c in chunks)
        if not self.two_batch_overlap or tokens < 2:
            return full.total_s
        a, b = split_chunks(chunks)
        fa = min(finished, len(a))
        return tbo_step_s(
            full,
            self.cost.prefill_chunks(a, fa),
            self.cost.prefill_chunks(b, finished - fa),
            self.moe_layer_fraction,
            self.sm_slowdown,
        )

    def _draft_s(
        self, batch: int, context_sum: float, chunks: list[tuple[int, int]], finished: int
    ) -> float:
        if self.speculator is None:
            return 0.0
        return self.speculator.draft_s(batch, context_sum, chunks, finished)

    def _stage_busy_s(self, mb: MicroBatch, traversal_s: float) -> list[float]:
        """Seconds each stage works on ``mb`` (its layers, not the send to the next stage):
        the plain forward's stages, scaled to the traversal the engine's options give it
        (two-batch overlap, the drafter's passes)."""
        d, ctx = mb.decodes, mb.context_sum
        if self._is_decode_round(mb) and self.speculator is not None:
            stages = [self.speculator.verify(d, ctx, stage=s) for s in range(self.pp)]
        elif self._is_decode_round(mb):
            stages = [self.decode_cost.decode(d, ctx, stage=s) for s in range(self.pp)]
        else:
            args = (d, ctx, list(mb.chunks), mb.finished, list(mb.verifies))
            stages = [self.cost.mixed_step(*args, stage=s) for s in range(self.pp)]
        work = [st.total_s - st.pp_comm_s for st in stages]
        sends = sum(st.pp_comm_s for st in stages)
        plain = sum(work)
        scale = (traversal_s - sends) / plain if plain > 0 else 1.0
        return [w * scale for w in work]

    def round_s(
        self,
        decodes: int,
        context_sum: float,
        chunks: list[tuple[int, int]],
        finished: int,
        verifies: list[tuple[int, int]] | None = None,
        speculative: bool = False,
        cohorts: Cohorts | None = None,
    ) -> float:
        """Seconds of one step of the scheduler: ``decodes`` decode tokens (``speculative``:
        each verifying all its drafts), speculative ``verifies`` (offset, q) and prompt
        ``chunks`` (offset, tokens), ``finished`` of which end their prompt, run as pp
        micro-batches in flight (one batch when pp = 1), each carrying its ``cohorts``' work
        (vllm_v1) or an even share."""
        verifies = verifies or []
        if self.pp == 1:
            mb = MicroBatch(
                decodes, context_sum, tuple(chunks), finished, tuple(verifies), speculative
            )
            return self._traversal_s(mb)
        mbs = split_round(
            decodes, context_sum, chunks, finished, self.pp, self.batch_tokens, verifies,
            speculative, cohorts,
        )  # fmt: skip
        seen: dict[MicroBatch, tuple[float, list[float]]] = {}
        for mb in mbs:
            if mb not in seen:
                t = self._traversal_s(mb)
                seen[mb] = (t, self._stage_busy_s(mb, t))
        return round_s([seen[mb][0] for mb in mbs], [seen[mb][1] for mb in mbs])

    def decode_s(self, batch: int, context_sum: float, cohorts: Cohorts | None = None) -> float:
        """Seconds of one decode round of ``batch`` running sequences whose contexts sum to
        ``context_sum`` keys (in their ``cohorts``, or evenly): every sequence gains
        ``tokens_per_step`` tokens (expected)."""
        spec = self.speculator is not None
        return self.round_s(batch, context_sum, [], 0, speculative=spec, cohorts=cohorts)

    def prefill_s(self, chunks: list[tuple[int, int]], finished: int) -> float:
        """Seconds of one prefill step of prompt ``chunks`` (offset, tokens), ``finished`` of
        which end their prompt (and, speculative, the drafter's passes over them)."""
        return self.round_s(0, 0.0, chunks, finished)

    def mixed_s(
        self,
        decodes: int,
        decode_context_sum: float,
        chunks: list[tuple[int, int]],
        finished: int,
        verifies: list[tuple[int, int]] | None = None,
        cohorts: Cohorts | None = None,
    ) -> float:
        """Seconds of one vLLM V1 step of ``decodes`` plain decode tokens, speculative
        ``verifies`` (offset, q: a sequence's last token and q − 1 drafts) and prefill
        ``chunks`` (``ReplicaCost.mixed_step``): a step of full verifies alone (q = k + 1
        each) is a decode round (``decode_s``); any other is a round of its micro-batches."""
        verifies = verifies or []
        q_full = 1 + (self.speculator.spec.num_speculative_tokens if self.speculator else 0)
        if not chunks and not decodes and verifies and all(q == q_full for _, q in verifies):
            if cohorts is not None:  # the verifies' slots are the decode round's cohorts
                at = cohorts.verifies
                cohorts = Cohorts(
                    tuple(sum(1 for a in at if a == k) for k in range(self.pp)),
                    tuple(
                        float(sum(o + 1 for (o, _), a in zip(verifies, at, strict=True) if a == k))
                        for k in range(self.pp)
                    ),
                )
            ctx = float(sum(o + 1 for o, _ in verifies))
            return self.decode_s(len(verifies), ctx, cohorts)
        return self.round_s(decodes, decode_context_sum, chunks, finished, verifies, False, cohorts)


def build_engine_step(s, cost, make_cost) -> EngineStep:
    """The engine of scenario ``s`` around its replica cost ``cost``; ``make_cost(scenario)``
    builds the replica costs of the drafter (``moesim.specs.scenario.draft_scenario``) and of
    decode steps whose dispatcher differs (``workload.decode_moe_dispatcher``)."""
    w, m = s.workload, s.model
    dec_s, decode_cost = s, cost
    d = getattr(w, "decode_moe_dispatcher", None)
    if d is not None and m.moe is not None and d != s.parallel.moe_dispatcher:
        layout = s.parallel.model_copy(update={"moe_dispatcher": d})
        dec_s = s.model_copy(update={"parallel": layout})
        decode_cost = make_cost(dec_s)
    speculator = None
    if getattr(w, "speculative", None) is not None:
        speculator = Speculator(w.speculative, decode_cost, make_cost(draft_scenario(dec_s)))
    return EngineStep(
        cost=cost,
        pp=s.parallel.pp,
        two_batch_overlap=bool(getattr(w, "two_batch_overlap", False)),
        moe_layer_fraction=m.n_moe_layers / m.n_layers,
        sm_slowdown=cost.ctx.comm_sm_slowdown,
        speculator=speculator,
        decode_cost=decode_cost,
        decode_sm_slowdown=decode_cost.ctx.comm_sm_slowdown,
        batch_tokens=w.max_prefill_tokens,
    )


@dataclass(frozen=True)
class StepTime:
    """Seconds of one step, as the scheduler reads a step's cost (``.total_s``)."""

    total_s: float


class SchedulerView:
    """An ``EngineStep`` behind the interface the serving scheduler calls on a ``ReplicaCost``
    (``prefill_chunks(...)``, ``decode(...)``, each with ``.total_s``)."""

    def __init__(self, engine: EngineStep):
        self.engine = engine

    @property
    def tokens_per_step(self) -> float:
        return self.engine.tokens_per_step

    def prefill_chunks(self, chunks: list[tuple[int, int]], finished: int) -> StepTime:
        return StepTime(self.engine.prefill_s(chunks, finished))

    def decode(self, batch: int, context_sum: float, cohorts: Cohorts | None = None) -> StepTime:
        return StepTime(self.engine.decode_s(batch, context_sum, cohorts))

    def mixed_step(
        self,
        decodes: int,
        decode_context_sum: float,
        chunks: list[tuple[int, int]],
        finished: int,
        verifies: list[tuple[int, int]] | None = None,
        cohorts: Cohorts | None = None,
    ) -> StepTime:
        t = self.engine.mixed_s(decodes, decode_context_sum, chunks, finished, verifies, cohorts)
        return StepTime(t)


def engine_extras(e: EngineStep, batch: int, context_sum: float) -> dict[str, object]:
    """Result entries of the engine's options at a typical decode batch: the micro-batches in
    flight (pp > 1), two-batch overlap's round with and without the split, speculative
    decoding's tokens per step and the verify and draft seconds of a round."""
    out: dict[str, object] = {}
    mb = e.decode_microbatch(batch)
    ctx = context_sum * mb / batch if batch else 0.0
    if e.pp > 1:
        out["decode_microbatches"] = min(e.pp, batch)
        out["decode_microbatch_size"] = mb
    if e.two_batch_overlap:
        whole = e.decode_forward(mb, ctx).total_s
        split = e._decode_forward_s(mb, ctx)
        out["two_batch_overlap"] = {
            "decode_forward_s": split,
            "decode_forward_s_without": whole,
            "split": split < whole,
        }
    if e.speculator is not None:
        sp = e.speculator.spec
        out["speculative"] = {
            "method": sp.method,
            "num_speculative_tokens": sp.num_speculative_tokens,
            "acceptance_rate": sp.acceptance_rate,
            "tokens_per_step": sp.tokens_per_step,
            "verify_s": e.speculator.verify(mb, ctx).total_s,
            "draft_s": e.speculator.draft_s(mb, ctx),
        }
    return out
