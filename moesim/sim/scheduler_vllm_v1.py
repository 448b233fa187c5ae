"""Serving: the vllm_v1 scheduler (vLLM V1's, token budget, paged KV, preemption).

**vllm_v1** (vLLM V1's, docs/configuration/optimization.md "Chunked Prefill": "the scheduling
policy prioritizes decode requests. It batches all pending decode requests before scheduling any
prefill operations. When there are available tokens in the max_num_batched_tokens budget, it
schedules pending prefills. If a pending prefill request cannot fit into max_num_batched_tokens,
it automatically chunks it"; vllm/v1/core/sched/scheduler.py ``Scheduler.schedule``). Each step
has a budget of ``max_num_batched_tokens`` tokens. First the running requests, oldest first:
each takes what it still has to compute (1 token for a decode, the rest of a prompt, chunked to
the budget left). Then, if nothing was preempted this step, waiting requests, oldest first,
while fewer than ``max_num_seqs`` run and budget is left. KV cache is paged: a request holds
ceil(tokens computed / ``block_size``) blocks of a pool of ``kv_capacity_tokens``, allocated
as it grows. When a running request's next tokens need a block and none is free, the newest
running request is preempted (vLLM's ``self.running.pop()``; recompute mode, V1's default):
its blocks are freed, its computed tokens reset, and it goes back to the head of the waiting
queue; when readmitted it recomputes its prompt and the tokens it had generated. A waiting
request is admitted only when its first chunk's blocks are free. Decodes ride along in prefill
steps (one forward over both: ``ReplicaCost.mixed_step``). A prompt's ``cached_tokens``
(prefix-cache hits) start computed: not recomputed, and their KV is shared (held by the
cache, not charged to the request's blocks). A ``prefilled`` request (the decode pool of PD
disaggregation) starts with its prompt computed and its first token generated; its blocks are
allocated at admission and lost, like any other, when it is preempted.

Chunk tokens attend the prompt's earlier tokens (read from the KV cache) and their own causally.

**Pipeline cohorts** (``EngineConfig.max_concurrent_batches`` = pp > 1; vLLM V1's batch queue,
``moesim.sim.serving_pipeline``): a step is a round of pp batches, each with its own share of
the budget (``max_num_batched_tokens`` / pp); ``max_num_seqs`` caps the running total. Each
request rides one batch, its cohort (``Request.cohort``): it joins the batch whose
``schedule()`` call first follows its arrival (``earliest_batch``) or the next with budget left
(``place``), a prompt cut where the round is full going on in the next batches, and stays in
the batch whose output brings it back (``take``). A running request's decode (or verify) is
scheduled only in its cohort's batch, cut to that batch's budget; if the batch is full it waits
for the next round. A preempted request loses its cohort and re-joins whichever batch admits it.
The step's cost gets each cohort's work (``Cohorts``) and the log how uneven the rounds were.

**Speculative decoding** (``EngineConfig.num_speculative_tokens`` k > 0), as V1's scheduler runs
it ("each request just has the num_computed_tokens and num_tokens_with_spec ... general enough
to cover chunked prefills, prefix caching, speculative decoding", ``Scheduler.schedule``): once
a request has sampled a token the drafter has proposed k drafts for it, so its next decode
schedules 1 + k tokens (``num_tokens_with_spec − num_computed_tokens``), cut to the budget left
(the drafts past it are dropped). Its KV blocks cover those tokens and k lookahead slots beyond
them (``allocate_slots(..., num_lookahead_tokens=k)`` for running requests; none for a waiting
request whose computed tokens are 0). The step verifies them in the same forward as the other
decodes and the prompt chunks (``ReplicaCost.mixed_step`` ``verifies``); the drafter's passes
come after it (``moesim.sim.speculative``). The target accepts a prefix of the drafts and adds
its own token: the sequence gains 1 + accepted tokens and its computed tokens fall back by the
rejected drafts (``update_from_output``: ``num_computed_tokens -= num_rejected``); the blocks
stay allocated. A preempted request loses its drafts.

How many drafts are accepted is drawn, not averaged: each request has its own seeded stream of
uniforms (the workload seed and its index), k per verify, and accepts drafts up to the first
uniform ≥ a (Leviathan et al. 2023's accept-until-first-reject; the truncated geometric with
mean ``SpeculativeSpec.tokens_per_step`` − 1). Drawn, because vLLM's rejection sampler decides
per request and per step, and the engine's state is whole tokens: a request's KV blocks, the
token budget of the next step and the step at which it finishes all depend on how many tokens
it actually gained; an expected 1.85 tokens per step has no block boundary or last step. The
draws give requests different TPOTs (a p99 above the p50, a static batch that ends with its
unluckiest request) and are the same on every run with the same seed; on the same draws a
higher a accepts at least as many drafts. Speculative decodes are stepped one at a time (no
decode-only fast path).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import simpy

from moesim.sim.serving_engine import EngineConfig, ServerLog, arrivals
from moesim.sim.serving_pipeline import Cohorts, earliest_batch, place, take
from moesim.sim.serving_requests import Request
from moesim.sim.serving_step import ReplicaCost


@dataclass
class _Seq:
    """A request's state in the vllm_v1 engine."""

    req: Request
    computed: int  # tokens whose KV is in the cache (prefix-cache hits count)
    generated: int = 0  # output tokens sampled so far
    blocks: int = 0  # KV blocks held
    drafts: int = 0  # speculative: drafts proposed for the next step
    rng: np.random.Generator | None = None  # speculative: this request's acceptance draws
    slot: int = -1  # pp > 1: the batch of the round it rides (its cohort); -1 before it runs

    @classmethod
    def arriving(cls, r: Request) -> _Seq:
        """``r`` as it enters the engine: its prefix-cache hits computed, or, prefilled
        elsewhere, its whole prompt and its first token (no drafts yet: the drafter proposes
        after the request's first step here)."""
        if r.prefilled:
            return cls(r, r.prompt_tokens, generated=1)
        return cls(r, r.cached_tokens)

    @property
    def to_compute(self) -> int:
        """Tokens the engine must still run before it samples the next one."""
        return self.req.prompt_tokens + self.generated - self.computed


class _Acceptance:
    """Seeded draws of how many of a sequence's drafts the target accepts: each draft is
    accepted with probability a given the ones before it, up to the first rejection
    (Leviathan et al. 2023), so a verify of j drafts accepts i < j with probability
    a^i·(1 − a) and all j with a^j. Each request draws its own stream of uniforms (seeded by
    the workload seed and its index), k per verify step: the draws are the same whatever
    else the engine runs, and a higher a accepts at least as many drafts on the same draws."""

    def __init__(self, rate: float, k: int, seed: int):
        self.rate, self.k, self.seed = rate, k, seed

    def stream(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0x5BEC, index])

    def accepted(self, rng: np.random.Generator, drafts: int) -> int:
        u = rng.random(self.k)[:drafts] < self.rate
        return drafts if u.all() else int(np.argmin(u))


def serve_vllm_v1(
    cost: ReplicaCost, requests: list[Request], engine: EngineConfig, window_s: float
) -> ServerLog:
    env = simpy.Environment()
    queue: simpy.Store = simpy.Store(env)
    log = ServerLog(requests)
    bs, budget_tokens, max_seqs = (
        engine.block_size,
        engine.max_num_batched_tokens,
        engine.max_num_seqs,
    )
    pp = engine.max_concurrent_batches
    per_batch = budget_tokens // pp  # each batch in flight has its own budget
    k = engine.num_speculative_tokens
    acceptance = _Acceptance(engine.acceptance_rate, k, engine.seed)
    index = {id(r): i for i, r in enumerate(requests)}
    total_blocks = engine.kv_blocks
    # a decode schedules its token and k drafts and reserves k lookahead slots beyond them
    need_most = max((r.prompt_tokens + r.output_tokens for r in requests), default=0) + 2 * k
    if -(-need_most // bs) > total_blocks:
        raise ValueError(
            f"a request of {need_most} tokens needs {-(-need_most // bs)} KV blocks of {bs} "
            f"tokens; the pool holds {total_blocks:g}: it can never finish (more KV memory, or "
            "shorter requests)"
        )

    def admit(r: Request) -> _Seq:
        seq = _Seq.arriving(r)
        if k:
            seq.rng = acceptance.stream(index[id(r)])
        return seq

    def server():
        waiting: deque[_Seq] = deque()
        running: list[_Seq] = []  # admission order: the last is preempted first
        free = total_blocks
        held = 0  # blocks held by running requests
        last = (0.0, 0.0)  # pp > 1: (start, end) of the last round
        freed: deque[int] = deque()  # pp > 1: cohorts of the requests the last round finished
        done = 0
        while done < len(log.requests):
            if not waiting and not running:
                waiting.append(admit((yield queue.get())))
            while queue.items:
                waiting.append(admit((yield queue.get())))
            steps = _decode_run_length(running, waiting, free, engine)
            if steps > 1:  # a run of decode-only steps: no admission, finish or preemption
                n = len(running)
                context0 = sum(seq.computed + 1 for seq in running)
                counts, ctx0 = [0] * pp, [0] * pp
                for seq in running:
                    counts[seq.slot] += 1
                    ctx0[seq.slot] += seq.computed + 1
                ran = 0
                while ran < steps:
                    context = float(context0 + ran * n)
                    start = env.now
                    if pp > 1:  # each cohort rides its own micro-batch
                        ctx = tuple(float(c + ran * m) for c, m in zip(ctx0, counts, strict=True))
                        step = cost.decode(n, context, Cohorts(tuple(counts), ctx))
                        log.count_cohorts(counts)
                    else:
                        step = cost.decode(n, context)
                    yield env.timeout(step.total_s)
                    log.steps.append(("decode", start, env.now, n))
                    last = (start, env.now)
                    log.count_decodes(n, context)
                    if env.now <= window_s:
                        log.tokens_in_window += n
                    ran += 1
                    if queue.items and len(running) < max_seqs:
                        break  # an arrival can be admitted: back to the full scheduler
                log.batched_tokens += ran * n
                for seq in running:
                    seq.computed += ran
                    seq.generated += ran
                    grown = -(-(seq.computed - seq.req.cached_tokens) // bs)
                    free -= grown - seq.blocks
                    held += grown - seq.blocks
                    seq.blocks = grown
                log.peak_kv_blocks = max(log.peak_kv_blocks, held)
                continue
            room = [per_batch] * pp  # budget left in each batch of the round (one when pp = 1)
            scheduled: list[tuple[_Seq, int, int]] = []  # (request, tokens, batch it starts in)
            preempted = False
            i = 0
            while i < len(running) and any(room):
                seq = running[i]
                # a decode: its token and its drafts (vLLM's num_tokens_with_spec −
                # num_computed_tokens), cut to the budget left in its cohort's batch; KV slots
                # for them and for k lookahead tokens (allocate_slots(..., num_lookahead_tokens))
                is_decode = seq.to_compute == 1 and seq.computed > 0
                first, new = place(room, seq.slot, seq.to_compute + seq.drafts, is_decode)
                if not new:  # its batch is full: it waits for the next round
                    i += 1
                    continue
                slots = seq.computed + new + k - seq.req.cached_tokens
                need = max(0, -(-slots // bs) - seq.blocks)
                lost = False
                while need > free:
                    victim = running.pop()
                    free += victim.blocks
                    held -= victim.blocks
                    victim.blocks, victim.computed = 0, victim.req.cached_tokens
                    victim.drafts = 0
                    victim.slot = -1  # re-joins whichever batch admits it again
                    victim.req.preemptions += 1
                    log.preemptions += 1
                    waiting.appendleft(victim)
                    preempted = True
                    if victim is seq:
                        lost = True
                        break
                if lost:
                    break
                free -= need
                held += need
                seq.blocks += need
                scheduled.append((seq, new, first))
                seq.slot = seq.req.cohort = take(room, first, new)
                i += 1
            while not preempted and waiting and any(room) and len(running) < max_seqs:
                seq = waiting[0]
                # it joins the first batch with budget left from the one whose schedule() call
                # first follows it (its cohort from now; see earliest_batch)
                at = earliest_batch(seq.req.arrival_s, last, freed, pp)
                first, new = place(room, at, seq.to_compute, False)
                if not new:
                    first, new = place(room, 0, seq.to_compute, False)
                # no lookahead for a request not yet started (vLLM: effective_lookahead_tokens
                # is 0 while num_computed_tokens is 0)
                need = -(-(seq.computed + new - seq.req.cached_tokens) // bs) - seq.blocks
                if need > free:
                    break
                waiting.popleft()
                free -= need
                held += need
                seq.blocks += need
                running.append(seq)
                scheduled.append((seq, new, first))
                seq.slot = seq.req.cohort = take(room, first, new)
            if not scheduled:  # cannot happen with a pool that holds the longest request
                raise RuntimeError("vllm_v1 engine: nothing could be scheduled")
            log.peak_kv_blocks = max(log.peak_kv_blocks, held)
            decodes, context, chunks, emitting = 0, 0.0, [], 0
            verifies: list[tuple[int, int]] = []
            per_slot, slot_ctx = [0] * pp, [0.0] * pp
            verify_at: list[int] = []
            chunk_at: list[int] = []
            for seq, new, first in scheduled:
                if seq.to_compute == 1 and seq.computed > 0 and new > 1:
                    verifies.append((seq.computed, new))
                    verify_at.append(first)
                elif new == 1 and seq.computed > 0:
                    decodes += 1
                    context += seq.computed + 1
                    per_slot[first] += 1
                    slot_ctx[first] += seq.computed + 1
                else:
                    chunks.append((seq.computed, new))
                    chunk_at.append(first)
                    emitting += new == seq.to_compute
            log.prefill_tokens += sum(c for _, c in chunks)
            log.batched_tokens += sum(new for _, new, _ in scheduled)
            start = env.now
            if pp > 1:  # every request's work rides its cohort's micro-batch
                cohorts = Cohorts(
                    tuple(per_slot), tuple(slot_ctx), tuple(verify_at), tuple(chunk_at)
                )
                step = cost.mixed_step(
                    decodes, context, chunks, emitting, verifies, cohorts=cohorts
                )
                log.count_cohorts([d + verify_at.count(b) for b, d in enumerate(per_slot)])
            else:
                step = cost.mixed_step(decodes, context, chunks, emitting, verifies)
            yield env.timeout(step.total_s)
            kind = "decode" if not chunks else "prefill" if not decodes + len(verifies) else "mixed"
            log.steps.append((kind, start, env.now, len(scheduled)))
            last = (start, env.now)
            freed.clear()
            if decodes or verifies:
                log.count_decodes(
                    decodes + len(verifies), context + sum(o + 1 for o, _ in verifies)
                )
            emitted = 0
            for seq, new, _ in scheduled:
                caught_up = new >= seq.to_compute
                drafts = new - seq.to_compute  # drafts verified in this step
                seq.computed += new
                if not caught_up:
                    continue
                gained = 1
                if drafts > 0:
                    assert seq.rng is not None
                    accepted = acceptance.accepted(seq.rng, drafts)
                    seq.computed -= drafts - accepted  # rejected drafts' slots are rewritten
                    gained += accepted
                    log.draft_tokens += drafts
                    log.accepted_tokens += accepted
                    log.verify_steps += 1
                r = seq.req
                gained = min(gained, r.output_tokens - seq.generated)
                seq.generated += gained
                seq.drafts = k  # the drafter proposes for the next step
                emitted += gained
                if math.isnan(r.first_token_s):  # its first token out of this engine
                    r.first_token_s = env.now
                if seq.generated >= r.output_tokens:
                    r.finish_s = env.now
                    free += seq.blocks
                    held -= seq.blocks
                    seq.blocks = 0
                    running.remove(seq)
                    freed.append(seq.slot)
                    done += 1
            if env.now <= window_s:
                log.tokens_in_window += emitted

    env.process(arrivals(env, log.requests, queue))
    env.process(server())
    env.run()
    return log


def _decode_run_length(
    running: list[_Seq], waiting: deque[_Seq], free: float, engine: EngineConfig
) -> int:
    """How many next steps are sure to be plain decode steps of every running sequence, with
    no request finishing, none admitted and no KV block short (0 when the next step is not
    one): such a run is stepped without per-sequence bookkeeping, to the same times."""
    n = len(running)
    if engine.num_speculative_tokens:  # every decode verifies drafts: stepped one by one
        return 0
    if not n or n > engine.max_num_batched_tokens or (waiting and n < engine.max_num_seqs):
        return 0
    pp = engine.max_concurrent_batches
    if pp > 1:  # every cohort's decodes must fit its batch's budget
        per_slot = np.bincount([seq.slot for seq in running], minlength=pp)
        if per_slot.max() > engine.max_num_batched_tokens // pp:
            return 0
    if any(seq.to_compute != 1 or seq.computed == 0 for seq in running):
        return 0
    # the step that finishes a request runs through the full scheduler
    steps = min(seq.req.output_tokens - seq.generated for seq in running) - 1
    if steps < 2 or math.isinf(free):
        return max(steps, 0)
    bs = engine.block_size
    own = np.array([seq.computed - seq.req.cached_tokens for seq in running])
    held = np.array([seq.blocks for seq in running])

    def blocks_needed(k: int) -> int:
        return int(np.sum(-(-(own + k) // bs) - held))

    if blocks_needed(steps) <= free:
        return steps
    lo, hi = 0, steps  # blocks_needed(lo) <= free < blocks_needed(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if blocks_needed(mid) <= free:
            lo = mid
        else:
            hi = mid
    return lo
