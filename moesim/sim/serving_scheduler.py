"""Serving: the engine loop of one replica, a SimPy process over its requests.

Two schedulers (``EngineConfig.policy``), each in its own module:

- **vllm_v1** (``moesim.sim.scheduler_vllm_v1``, the default): vLLM V1's scheduler, a budget
  of ``max_num_batched_tokens`` tokens per step shared by the running requests' decodes and
  chunked prefills, a paged KV pool, preemption (recompute) when the pool runs out.
- **prefill_first** (``moesim.sim.scheduler_prefill_first``, moesim's earlier scheduler, kept
  for comparison): prefill and decode steps alternate, no KV paging.

What both share (``EngineConfig``, ``ServerLog``, the arrival feed) is in
``moesim.sim.serving_engine``; it is re-exported here, so callers import the engine from one
place.

TTFT = first token − arrival; TPOT = (last token − first token) / (output tokens − 1).
"""

from __future__ import annotations

import math

from moesim.sim.scheduler_prefill_first import serve_prefill_first
from moesim.sim.scheduler_vllm_v1 import serve_vllm_v1
from moesim.sim.serving_engine import DEFAULT_BLOCK_SIZE, POLICIES, EngineConfig, ServerLog
from moesim.sim.serving_requests import Request
from moesim.sim.serving_step import ReplicaCost

__all__ = ["DEFAULT_BLOCK_SIZE", "POLICIES", "EngineConfig", "ServerLog", "serve"]


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
        return serve_vllm_v1(cost, requests, engine, window_s)
    return serve_prefill_first(cost, requests, engine, window_s)
