"""Serving: the engine loop of one replica, a SimPy process over its requests.

The server (one replica, symmetric) runs prefill-first continuous batching: while a prompt is
part-way through its prefill, or requests wait and slots are free, it runs a prefill step of at
most ``max_prefill_tokens`` prompt tokens (vLLM's ``max_num_batched_tokens``): first the rest
of the prompts already started (oldest first), then new requests, the last one chunked when it
does not fit whole (chunked prefill: chunk tokens attend the prompt's earlier tokens, read from
the KV cache). A prompt's first token comes out of the step that finishes it. Otherwise one
decode step gives every running sequence a token. Decodes do not ride along in prefill steps
(vLLM V1 mixes them; here prefill and decode steps alternate, which overstates TPOT when
prompts keep arriving). A request reserves the KV cache of its whole ``prompt_len +
output_len`` at admission (no preemption), so concurrency is min(max_batch_size, KV capacity)
under Poisson arrivals; a static ``batch_size`` is run as given, and the result says when its
KV cache does not fit (``kv_capacity_sequences`` < ``batch_size``, ``memory_note``).
TTFT = first token − arrival; TPOT = (last token − first token) / (output_len − 1).

A decode step of a speculative engine (``cost.tokens_per_step`` > 1, ``moesim.sim.engine_step``)
gives each sequence that many tokens in expectation: a request then needs
⌈(output_len − 1) / tokens_per_step⌉ decode steps, its context growing by its share of tokens
per step.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import simpy

from moesim.sim.serving_requests import Request
from moesim.sim.serving_step import ReplicaCost
from moesim.specs.workload import DEFAULT_MAX_PREFILL_TOKENS


@dataclass(frozen=True)
class EngineConfig:
    """How one replica's engine schedules (vLLM's names): at most ``max_num_seqs`` sequences
    started and not finished, at most ``max_num_batched_tokens`` prompt tokens per prefill
    step."""

    max_num_seqs: int
    max_num_batched_tokens: int = DEFAULT_MAX_PREFILL_TOKENS

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_seqs ({self.max_num_seqs}) and max_num_batched_tokens "
                f"({self.max_num_batched_tokens}) must be at least 1"
            )


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
    env = simpy.Environment()
    queue: simpy.Store = simpy.Store(env)
    log = ServerLog(requests)
    slots, budget_tokens = engine.max_num_seqs, engine.max_num_batched_tokens
    per_step = getattr(cost, "tokens_per_step", 1.0)  # > 1: speculative decoding

    def rounds(r: Request) -> int:
        """Decode steps that give ``r`` its tokens after the first."""
        return math.ceil((r.output_tokens - 1) / per_step)

    def arrivals():
        for r in log.requests:
            if r.arrival_s > env.now:
                yield env.timeout(r.arrival_s - env.now)
            queue.put(r)

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
                    entry = [waiting.popleft(), 0]
                    prefilling.append(entry)
                    take = min(entry[0].prompt_tokens, budget)
                    chunks.append((0, take))
                    entry[1] = take
                    budget -= take
                finished = [e[0] for e in prefilling if e[1] == e[0].prompt_tokens]
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
            log.decode_steps += 1
            log.decode_batch_sum += batch
            log.decode_context_sum += context_sum
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

    env.process(arrivals())
    env.process(server())
    env.run()
    return log
