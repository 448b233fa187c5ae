"""Serving: the engine loop of one replica, a SimPy process over its requests.

Two schedulers (``EngineConfig.policy``):

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

**prefill_first** (moesim's earlier scheduler, kept for comparison): while a prompt is
part-way through its prefill, or requests wait and slots are free, it runs a prefill step of at
most ``max_num_batched_tokens`` prompt tokens: first the rest of the prompts already started
(oldest first), then new requests, the last one chunked when it does not fit whole. A prompt's
first token comes out of the step that finishes it. Otherwise one decode step gives every
running sequence a token: prefill and decode steps alternate, which overstates TPOT when prompts
keep arriving. No KV paging: the caller caps ``max_num_seqs`` at the sequences whose whole
``prompt + output`` KV fits (no preemption).

Chunk tokens attend the prompt's earlier tokens (read from the KV cache) and their own causally.
TTFT = first token − arrival; TPOT = (last token − first token) / (output tokens − 1).

A decode step of a speculative engine (``cost.tokens_per_step`` > 1, ``moesim.sim.engine_step``)
gives each sequence that many tokens in expectation (prefill_first only; the scenario refuses
speculative decoding under vllm_v1): a request then needs ⌈(output tokens − 1) /
tokens_per_step⌉ decode steps, its context growing by its share of tokens per step.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import simpy

from moesim.sim.serving_requests import Request
from moesim.sim.serving_step import ReplicaCost
from moesim.specs.workload import DEFAULT_MAX_PREFILL_TOKENS

#: the engine schedulers (see the module docstring)
POLICIES = ("vllm_v1", "prefill_first")
#: tokens per KV-cache block: vLLM's default block size on CUDA (CacheConfig.block_size)
DEFAULT_BLOCK_SIZE = 16


@dataclass(frozen=True)
class EngineConfig:
    """How one replica's engine schedules (vLLM's names): at most ``max_num_seqs`` sequences
    started and not finished, at most ``max_num_batched_tokens`` tokens per step (prompt tokens
    per prefill step under prefill_first), a paged KV pool of ``kv_capacity_tokens`` tokens in
    blocks of ``block_size`` (vllm_v1 only; inf: unbounded)."""

    max_num_seqs: int
    max_num_batched_tokens: int = DEFAULT_MAX_PREFILL_TOKENS
    policy: str = "prefill_first"
    kv_capacity_tokens: float = math.inf
    block_size: int = DEFAULT_BLOCK_SIZE

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.block_size < 1:
            raise ValueError(
                f"max_num_seqs ({self.max_num_seqs}), max_num_batched_tokens "
                f"({self.max_num_batched_tokens}) and block_size ({self.block_size}) must be at "
                "least 1"
            )
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r}: use one of {', '.join(POLICIES)}")

    @property
    def kv_blocks(self) -> float:
        """Blocks in the KV pool (inf when unbounded)."""
        if math.isinf(self.kv_capacity_tokens):
            return math.inf
        return float(int(self.kv_capacity_tokens // self.block_size))


@dataclass
class ServerLog:
    """What the server did: its requests and its steps (kind, start, end, batch)."""

    requests: list[Request]
    steps: list[tuple[str, float, float, int]] = field(default_factory=list)
    decode_batch_sum: float = 0.0
    decode_context_sum: float = 0.0
    decode_steps: int = 0
    tokens_in_window: float = 0.0  # output tokens produced before the arrival window closed
    preemptions: int = 0  # requests whose KV cache was freed to make room (recomputed later)
    prefill_tokens: int = 0  # prompt (and recomputed) tokens run through prefill chunks
    peak_kv_blocks: int = 0  # most KV blocks held at once (vllm_v1)

    def count_decodes(self, batch: int, context: float) -> None:
        """Count a step that decoded ``batch`` sequences attending ``context`` keys in all."""
        self.decode_steps += 1
        self.decode_batch_sum += batch
        self.decode_context_sum += context

    @property
    def makespan_s(self) -> float:
        """When the last request finished (0 without requests)."""
        return max((r.finish_s for r in self.requests), default=0.0)


def serve(
    cost: ReplicaCost,
    requests: list[Request],
    engine: EngineConfig,
    window_s: float = math.inf,
) -> ServerLog:
    """Run one replica's engine over ``requests`` (in arrival order, each with its own prompt
    and output length) until every one has finished; fills their first-token and finish
    times. ``window_s``: output tokens produced by then count in ``tokens_in_window``."""
    if engine.policy == "vllm_v1":
        return _serve_vllm_v1(cost, requests, engine, window_s)
    return _serve_prefill_first(cost, requests, engine, window_s)


def _serve_prefill_first(
    cost: ReplicaCost, requests: list[Request], engine: EngineConfig, window_s: float
) -> ServerLog:
    env = simpy.Environment()
    queue: simpy.Store = simpy.Store(env)
    log = ServerLog(requests)
    slots, budget_tokens = engine.max_num_seqs, engine.max_num_batched_tokens
    per_step = getattr(cost, "tokens_per_step", 1.0)  # > 1: speculative decoding

    def rounds(r: Request) -> int:
        """Decode steps that give ``r`` its tokens after the first."""
        return math.ceil((r.output_tokens - 1) / per_step)

    def server():
        waiting: deque[Request] = deque()
        prefilling: deque[list] = deque()  # [request, prompt tokens done] of started prompts
        running: list[tuple[int, int, Request]] = []  # heap of (last decode step, id, request)
        step = 0  # decode steps so far
        context_sum = 0.0  # keys the next decode step's queries attend, over running sequences
        yield_sum = 0.0  # tokens a decode step gives the running sequences (batch when plain)
        done = 0
        while done < len(log.requests):
            if not waiting and not running and not prefilling:
                waiting.append((yield queue.get()))
            while queue.items:
                waiting.append((yield queue.get()))
            if prefilling or (waiting and len(running) < slots):
                budget = budget_tokens
                chunks: list[tuple[int, int]] = []
                started = list(prefilling)
                for entry in started:
                    if budget == 0:
                        break
                    take = min(entry[0].prompt_tokens - entry[1], budget)
                    chunks.append((entry[1], take))
                    entry[1] += take
                    budget -= take
                while budget > 0 and waiting and len(running) + len(prefilling) < slots:
                    r = waiting.popleft()
                    entry = [r, r.cached_tokens]
                    prefilling.append(entry)
                    take = min(r.prompt_tokens - r.cached_tokens, budget)
                    chunks.append((r.cached_tokens, take))
                    entry[1] = r.cached_tokens + take
                    budget -= take
                finished = [e[0] for e in prefilling if e[1] == e[0].prompt_tokens]
                log.prefill_tokens += sum(c for _, c in chunks)
                start = env.now
                yield env.timeout(cost.prefill_chunks(chunks, len(finished)).total_s)
                log.steps.append(("prefill", start, env.now, len(chunks)))
                if env.now <= window_s:
                    log.tokens_in_window += len(finished)
                while prefilling and prefilling[0][1] == prefilling[0][0].prompt_tokens:
                    prefilling.popleft()
                for r in finished:
                    r.first_token_s = env.now
                    if r.output_tokens == 1:
                        r.finish_s = env.now
                        done += 1
                    else:
                        heapq.heappush(running, (step + rounds(r), id(r), r))
                        context_sum += r.prompt_tokens + 1
                        yield_sum += (r.output_tokens - 1) / rounds(r)
                continue
            batch = len(running)
            start = env.now
            yield env.timeout(cost.decode(batch, context_sum).total_s)
            log.steps.append(("decode", start, env.now, batch))
            log.count_decodes(batch, context_sum)
            if env.now <= window_s:
                log.tokens_in_window += yield_sum
            step += 1
            context_sum += yield_sum
            while running and running[0][0] == step:
                _, _, r = heapq.heappop(running)
                r.finish_s = env.now
                context_sum -= r.prompt_tokens + r.output_tokens
                yield_sum -= (r.output_tokens - 1) / rounds(r)
                done += 1

    env.process(_arrivals(env, log.requests, queue))
    env.process(server())
    env.run()
    return log


@dataclass
class _Seq:
    """A request's state in the vllm_v1 engine."""

    req: Request
    computed: int  # tokens whose KV is in the cache (prefix-cache hits count)
    generated: int = 0  # output tokens sampled so far
    blocks: int = 0  # KV blocks held

    @classmethod
    def arriving(cls, r: Request) -> _Seq:
        """``r`` as it enters the engine: its prefix-cache hits computed, or, prefilled
        elsewhere, its whole prompt and its first token."""
        if r.prefilled:
            return cls(r, r.prompt_tokens, generated=1)
        return cls(r, r.cached_tokens)

    @property
    def to_compute(self) -> int:
        """Tokens the engine must still run before it samples the next one."""
        return self.req.prompt_tokens + self.generated - self.computed


def _serve_vllm_v1(
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
    total_blocks = engine.kv_blocks
    need_most = max((r.prompt_tokens + r.output_tokens for r in requests), default=0)
    if -(-need_most // bs) > total_blocks:
        raise ValueError(
            f"a request of {need_most} tokens needs {-(-need_most // bs)} KV blocks of {bs} "
            f"tokens; the pool holds {total_blocks:g}: it can never finish (more KV memory, or "
            "shorter requests)"
        )

    def server():
        waiting: deque[_Seq] = deque()
        running: list[_Seq] = []  # admission order: the last is preempted first
        free = total_blocks
        held = 0  # blocks held by running requests
        done = 0
        while done < len(log.requests):
            if not waiting and not running:
                r = yield queue.get()
                waiting.append(_Seq.arriving(r))
            while queue.items:
                r = yield queue.get()
                waiting.append(_Seq.arriving(r))
            steps = _decode_run_length(running, waiting, free, engine)
            if steps > 1:  # a run of decode-only steps: no admission, finish or preemption
                n = len(running)
                context0 = sum(seq.computed + 1 for seq in running)
                ran = 0
                while ran < steps:
                    context = float(context0 + ran * n)
                    start = env.now
                    yield env.timeout(cost.decode(n, context).total_s)
                    log.steps.append(("decode", start, env.now, n))
                    log.count_decodes(n, context)
                    if env.now <= window_s:
                        log.tokens_in_window += n
                    ran += 1
                    if queue.items and len(running) < max_seqs:
                        break  # an arrival can be admitted: back to the full scheduler
                for seq in running:
                    seq.computed += ran
                    seq.generated += ran
                    grown = -(-(seq.computed - seq.req.cached_tokens) // bs)
                    free -= grown - seq.blocks
                    held += grown - seq.blocks
                    seq.blocks = grown
                log.peak_kv_blocks = max(log.peak_kv_blocks, held)
                continue
            budget = budget_tokens
            scheduled: list[tuple[_Seq, int]] = []
            preempted = False
            i = 0
            while i < len(running) and budget > 0:
                seq = running[i]
                new = min(seq.to_compute, budget)
                need = -(-(seq.computed + new - seq.req.cached_tokens) // bs) - seq.blocks
                lost = False
                while need > free:
                    victim = running.pop()
                    free += victim.blocks
                    held -= victim.blocks
                    victim.blocks, victim.computed = 0, victim.req.cached_tokens
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
                scheduled.append((seq, new))
                budget -= new
                i += 1
            while not preempted and waiting and budget > 0 and len(running) < max_seqs:
                seq = waiting[0]
                new = min(seq.to_compute, budget)
                need = -(-(seq.computed + new - seq.req.cached_tokens) // bs) - seq.blocks
                if need > free:
                    break
                waiting.popleft()
                free -= need
                held += need
                seq.blocks += need
                running.append(seq)
                scheduled.append((seq, new))
                budget -= new
            if not scheduled:  # cannot happen with a pool that holds the longest request
                raise RuntimeError("vllm_v1 engine: nothing could be scheduled")
            log.peak_kv_blocks = max(log.peak_kv_blocks, held)
            decodes, context, chunks, emitting = 0, 0.0, [], 0
            for seq, new in scheduled:
                if new == 1 and seq.computed > 0:
                    decodes += 1
                    context += seq.computed + 1
                else:
                    chunks.append((seq.computed, new))
                    emitting += new == seq.to_compute
            log.prefill_tokens += sum(c for _, c in chunks)
            start = env.now
            yield env.timeout(cost.mixed_step(decodes, context, chunks, emitting).total_s)
            kind = "decode" if not chunks else "prefill" if not decodes else "mixed"
            log.steps.append((kind, start, env.now, len(scheduled)))
            if decodes:
                log.count_decodes(decodes, context)
            emitted = 0
            for seq, new in scheduled:
                caught_up = new == seq.to_compute
                seq.computed += new
                if not caught_up:
                    continue
                seq.generated += 1
                emitted += 1
                r = seq.req
                if math.isnan(r.first_token_s):  # its first token out of this engine
                    r.first_token_s = env.now
                if seq.generated >= r.output_tokens:
                    r.finish_s = env.now
                    free += seq.blocks
                    held -= seq.blocks
                    seq.blocks = 0
                    running.remove(seq)
                    done += 1
            if env.now <= window_s:
                log.tokens_in_window += emitted

    env.process(_arrivals(env, log.requests, queue))
    env.process(server())
    env.run()
    return log


def _arrivals(env: simpy.Environment, requests: list[Request], queue: simpy.Store):
    """Put each request on the engine's queue at its arrival time (both engines' feed)."""
    for r in requests:
        if r.arrival_s > env.now:
            yield env.timeout(r.arrival_s - env.now)
        queue.put(r)


def _decode_run_length(
    running: list[_Seq], waiting: deque[_Seq], free: float, engine: EngineConfig
) -> int:
    """How many next steps are sure to be plain decode steps of every running sequence, with
    no request finishing, none admitted and no KV block short (0 when the next step is not
    one): such a run is stepped without per-sequence bookkeeping, to the same times."""
    n = len(running)
    if not n or n > engine.max_num_batched_tokens or (waiting and n < engine.max_num_seqs):
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
