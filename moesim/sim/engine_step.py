"""How a serving engine runs one step of a replica: the plain forward of ``ReplicaCost``,
pipelined over pp stages in decode, split in two overlapped micro-batches
(``moesim.sim.two_batch_overlap``), and speculative (``moesim.sim.speculative``).

Decode with pp > 1: the engine keeps pp micro-batches of the running batch in flight, one per
stage (vLLM's virtual engines, one scheduler per pipeline stage "so that they can schedule
multiple batches simultaneously ... saturating all pipeline stages", vllm-project/vllm RFC
#11945; TensorRT-LLM likewise). In the steady state every stage runs each micro-batch's slice
of layers once per round, so a round lasts one traversal of a micro-batch of ⌈B/pp⌉ sequences
through all stages (its compute over the stages plus pp − 1 sends), every sequence gains a
token per round, and TPOT is that traversal. With fewer sequences than stages the micro-batches
hold one sequence each and stages idle. Prefill steps still traverse the stages one after
another (a chunk's stages are not overlapped with the decode micro-batches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moesim.sim.speculative import Speculator
from moesim.sim.two_batch_overlap import split_batch, split_chunks, tbo_step_s
from moesim.specs.scenario import draft_scenario


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

    def decode_s(self, batch: int, context_sum: float) -> float:
        """Seconds of one decode round of ``batch`` running sequences whose contexts sum to
        ``context_sum`` keys: every sequence gains ``tokens_per_step`` tokens (expected)."""
        mb = self.decode_microbatch(batch)
        ctx = context_sum * mb / batch if batch else 0.0
        t = self._decode_forward_s(mb, ctx)
        if self.speculator is not None:
            t += self.speculator.draft_s(mb, ctx)
        return t

    def prefill_s(self, chunks: list[tuple[int, int]], finished: int) -> float:
        """Seconds of one prefill step of prompt ``chunks`` (offset, tokens), ``finished`` of
        which end their prompt (and, speculative, the drafter's passes over them)."""
        return self._prefill_forward_s(chunks, finished) + self._draft_s(0, 0.0, chunks, finished)

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

    def mixed_s(
        self,
        decodes: int,
        decode_context_sum: float,
        chunks: list[tuple[int, int]],
        finished: int,
        verifies: list[tuple[int, int]] | None = None,
    ) -> float:
        """Seconds of one vLLM V1 step of ``decodes`` plain decode tokens, speculative
        ``verifies`` (offset, q: a sequence's last token and q − 1 drafts) and prefill
        ``chunks`` (``ReplicaCost.mixed_step``). A step of decodes alone, or of full verifies
        alone (q = k + 1 each), is a decode round (pipelined over pp, verify and drafts); a
        prefill-only one a prefill step; any other traverses the stages once (not pipelined),
        with two-batch overlap split into halves of decodes, verifies and chunks, and the
        drafter's passes over its verified sequences and chunks."""
        verifies = verifies or []
        q_full = 1 + (self.speculator.spec.num_speculative_tokens if self.speculator else 0)
        if not chunks and not verifies and self.speculator is None:
            return self.decode_s(decodes, decode_context_sum)
        if not chunks and not decodes and verifies and all(q == q_full for _, q in verifies):
            return self.decode_s(len(verifies), float(sum(o + 1 for o, _ in verifies)))
        if not decodes and not verifies:
            return self.prefill_s(chunks, finished)
        full = self.cost.mixed_step(decodes, decode_context_sum, chunks, finished, verifies)
        forward = full.total_s
        if self.two_batch_overlap:
            (da, ca), (db, cb) = split_batch(decodes, decode_context_sum)
            a, b = split_chunks(chunks) if chunks else ([], [])
            fa = min(finished, len(a))
            half = (len(verifies) + 1) // 2
            va, vb = verifies[:half], verifies[half:]
            forward = tbo_step_s(
                full,
                self.cost.mixed_step(da, ca, a, fa, va),
                self.cost.mixed_step(db, cb, b, finished - fa, vb),
                self.moe_layer_fraction,
                self.sm_slowdown,
            )
        ctx = float(sum(o + 1 for o, _ in verifies))
        return forward + self._draft_s(len(verifies), ctx, chunks, finished)


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

    def decode(self, batch: int, context_sum: float) -> StepTime:
        return StepTime(self.engine.decode_s(batch, context_sum))

    def mixed_step(
        self,
        decodes: int,
        decode_context_sum: float,
        chunks: list[tuple[int, int]],
        finished: int,
        verifies: list[tuple[int, int]] | None = None,
    ) -> StepTime:
        t = self.engine.mixed_s(decodes, decode_context_sum, chunks, finished, verifies)
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
