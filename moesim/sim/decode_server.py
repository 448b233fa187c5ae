"""The engine loop of a decode-only replica (the decode pool of prefill/decode disaggregation):
requests arrive with their prompt's KV cache in place and only decode.

Two engines, as the scenario's ``workload.scheduler`` says:

**vllm_v1** (the default; ``serve_decode_paged``): the colocated vllm_v1 engine
(``serving_scheduler``) over *prefilled* requests: a request is admitted when the blocks of its
prompt's KV cache and its next token are free in the replica's paged pool (``block_size``
tokens a block; the pool is usable HBM left after weights and the step's activations,
``serving_memory.plan_engine``), grows a block at a time, and when a running request needs a
block and none is free the newest running request is preempted: its blocks are freed and, when
readmitted, it recomputes its prompt and the tokens it had generated on this replica (vLLM
V1's recompute; its KV is not sent again), in steps mixed with the running decodes. With
speculative decoding each decode schedules its token and its drafts (none in a request's first
step here: the drafter proposes after it), acceptances drawn per request as colocated.

**Whole-sequence slots** (``serve_decode``; prefill_first):
At each step boundary the replica admits the requests that have arrived, oldest first, up to
its slots (``max_batch_size`` capped by its KV capacity; a request holds its slot until it
finishes), then runs one decode round of every running sequence (``EngineStep.decode_s``:
pipelined over pp stages, two-batch overlap, speculative). A request's first token reaches the
client at the end of its first decode round (the prefill's token is streamed with it), so
TTFT = queue + prefill + KV transfer + decode queue + first decode round; it then needs
⌈(output_len − 1) / tokens_per_step⌉ rounds, and its TPOT is the mean round time it saw:
(finish − admission) / (output_len − 1). A request of one output token needs no decode: its
token leaves when its KV cache has arrived.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

from moesim.sim.serving_requests import Request
from moesim.sim.serving_scheduler import EngineConfig, ServerLog, serve


@dataclass
class DecodeRequest:
    arrival_s: float  # at the prefill pool
    ready_s: float  # its KV cache has arrived at the decode replica
    prefilled_s: float = math.nan  # its prefill finished
    prompt_tokens: int = 1
    output_tokens: int = 1
    admitted_s: float = math.nan
    first_token_s: float = math.nan
    finish_s: float = math.nan


@dataclass
class DecodeLog:
    requests: list[DecodeRequest]
    steps: list[tuple[float, float, int]] = field(default_factory=list)  # start, end, batch
    busy_s: float = 0.0
    tokens_in_window: float = 0.0
    decode_batch_sum: float = 0.0
    decode_context_sum: float = 0.0
    decode_steps: int = 0
    preemptions: int = 0  # paged: requests whose KV cache was freed to make room
    peak_kv_blocks: int = 0  # paged: most KV blocks held at once
    engine_log: ServerLog | None = None  # paged: the vllm_v1 engine's own log


def serve_decode(
    engine,
    requests: list[DecodeRequest],
    slots: int,
    window_s: float = math.inf,
) -> DecodeLog:
    """Run one decode replica over ``requests`` (any order, each with its own prompt and
    output length) until all have finished."""
    log = DecodeLog(requests)
    pending = deque(sorted(requests, key=lambda r: r.ready_s))

    def rounds(r: DecodeRequest) -> int:
        return math.ceil((r.output_tokens - 1) / engine.tokens_per_step)

    def per_round(r: DecodeRequest) -> float:
        """Tokens a round gives ``r``: the expected yield, its last round's remainder spread."""
        return (r.output_tokens - 1) / rounds(r)

    running: list[tuple[int, int, DecodeRequest]] = []  # heap of (last round, id, request)
    step = 0
    context_sum = 0.0
    yield_sum = 0.0  # tokens a round gives the running sequences
    t = 0.0
    fresh: list[DecodeRequest] = []  # admitted, first round not run yet
    while pending or running:
        if not running and pending[0].ready_s > t:
            t = pending[0].ready_s
        while pending and pending[0].ready_s <= t and len(running) < slots:
            r = pending.popleft()
            r.admitted_s = t
            if r.output_tokens == 1:
                r.first_token_s = r.finish_s = t
                log.tokens_in_window += t <= window_s
                continue
            fresh.append(r)
            heapq.heappush(running, (step + rounds(r), id(r), r))
            context_sum += r.prompt_tokens + 1
            yield_sum += per_round(r)
        if not running:
            continue
        batch = len(running)
        dt = engine.decode_s(batch, context_sum)
        log.steps.append((t, t + dt, batch))
        log.decode_batch_sum += batch
        log.decode_context_sum += context_sum
        log.decode_steps += 1
        t += dt
        log.busy_s += dt
        step += 1
        context_sum += yield_sum
        if t <= window_s:
            log.tokens_in_window += yield_sum + len(fresh)
        for r in fresh:
            r.first_token_s = t
        fresh.clear()
        while running and running[0][0] == step:
            _, _, r = heapq.heappop(running)
            r.finish_s = t
            context_sum -= r.prompt_tokens + r.output_tokens
            yield_sum -= per_round(r)
    return log


def serve_decode_paged(
    view, requests: list[DecodeRequest], engine: EngineConfig, window_s: float = math.inf
) -> DecodeLog:
    """Run one decode replica's vllm_v1 engine (``view``: the scheduler's view of its
    ``EngineStep``) with a paged KV pool over ``requests``; fills their times as
    ``serve_decode`` does: admission is the start of the step that gave a request its first
    token (the decode queue ends there), the first token leaves at that step's end."""
    log = DecodeLog(requests)
    going = [r for r in requests if r.output_tokens > 1]
    for r in requests:
        if r.output_tokens == 1:  # no decode: its token leaves with its KV cache
            r.admitted_s = r.first_token_s = r.finish_s = r.ready_s
    order = sorted(going, key=lambda r: r.ready_s)
    mine = [Request(r.ready_s, r.prompt_tokens, r.output_tokens, prefilled=True) for r in order]
    out = serve(view, mine, engine, window_s)
    started = {end: start for _, start, end, _ in out.steps}
    for r, q in zip(order, mine, strict=True):
        r.first_token_s, r.finish_s = q.first_token_s, q.finish_s
        r.admitted_s = started[q.first_token_s]
    log.steps = [(a, b, n) for _, a, b, n in out.steps]
    log.busy_s = sum(b - a for a, b, _ in log.steps)
    # the prefill's token leaves with a request's first decode (or its KV cache)
    firsts = sum(r.first_token_s <= window_s for r in requests)
    log.tokens_in_window = out.tokens_in_window + firsts
    log.decode_batch_sum, log.decode_context_sum = out.decode_batch_sum, out.decode_context_sum
    log.decode_steps, log.preemptions = out.decode_steps, out.preemptions
    log.peak_kv_blocks = out.peak_kv_blocks
    log.engine_log = out
    return log
