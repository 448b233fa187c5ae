"""Serving: the prefill_first scheduler (moesim's earlier engine, kept for comparison).

**prefill_first**: while a prompt is
part-way through its prefill, or requests wait and slots are free, it runs a prefill step of at
most ``max_num_batched_tokens`` prompt tokens: first the rest of the prompts already started
(oldest first), then new requests, the last one chunked when it does not fit whole. A prompt's
first token comes out of the step that finishes it. Otherwise one decode step gives every
running sequence a token: prefill and decode steps alternate, which overstates TPOT when prompts
keep arriving. No KV paging: the caller caps ``max_num_seqs`` at the sequences whose whole
``prompt + output`` KV fits (no preemption).

Chunk tokens attend the prompt's earlier tokens (read from the KV cache) and their own causally.

A decode step of a speculative engine (``cost.tokens_per_step`` > 1, ``moesim.sim.engine_step``)
gives each sequence that many tokens in expectation (the vllm_v1 engine draws them instead,
``moesim.sim.scheduler_vllm_v1``): a request then needs ⌈(output tokens − 1) /
tokens_per_step⌉ decode steps, its context growing by its share of tokens per step.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

import simpy

from moesim.sim.serving_engine import EngineConfig, ServerLog, arrivals
from moesim.sim.serving_requests import Request
from moesim.sim.serving_step import ReplicaCost


def serve_prefill_first(
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

    env.process(arrivals(env, log.requests, queue))
    env.process(server())
    env.run()
    return log
