"""What the serving schedulers share: the engine's limits (``EngineConfig``, vLLM's names), the
log of what a replica's engine did (``ServerLog``) and the feed of arrivals into its queue.

The schedulers themselves: ``moesim.sim.scheduler_vllm_v1`` and
``moesim.sim.scheduler_prefill_first``; ``moesim.sim.serving_scheduler.serve`` picks one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import simpy

from moesim.sim.serving_requests import Request
from moesim.specs.workload import DEFAULT_MAX_PREFILL_TOKENS

#: the engine schedulers (moesim.sim.serving_scheduler)
POLICIES = ("vllm_v1", "prefill_first")
#: tokens per KV-cache block: vLLM's default block size on CUDA (CacheConfig.block_size)
DEFAULT_BLOCK_SIZE = 16


@dataclass(frozen=True)
class EngineConfig:
    """How one replica's engine schedules (vLLM's names): at most ``max_num_seqs`` sequences
    started and not finished, at most ``max_num_batched_tokens`` tokens per step (prompt tokens
    per prefill step under prefill_first), a paged KV pool of ``kv_capacity_tokens`` tokens in
    blocks of ``block_size`` (vllm_v1 only; inf: unbounded). Speculative decoding under
    vllm_v1: ``num_speculative_tokens`` drafts per decode, each accepted with probability
    ``acceptance_rate``, the draws seeded by ``seed`` (prefill_first takes tokens per step from
    the step cost instead). ``max_concurrent_batches`` (vLLM's name; pp): a step of the vllm_v1
    scheduler is a round of that many batches in flight, each with an equal share of
    ``max_num_batched_tokens``, and each request keeps the batch it joined (its cohort,
    ``moesim.sim.serving_pipeline``)."""

    max_num_seqs: int
    max_num_batched_tokens: int = DEFAULT_MAX_PREFILL_TOKENS
    policy: str = "prefill_first"
    kv_capacity_tokens: float = math.inf
    block_size: int = DEFAULT_BLOCK_SIZE
    num_speculative_tokens: int = 0
    acceptance_rate: float = 0.0
    seed: int = 0
    max_concurrent_batches: int = 1

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.block_size < 1:
            raise ValueError(
                f"max_num_seqs ({self.max_num_seqs}), max_num_batched_tokens "
                f"({self.max_num_batched_tokens}) and block_size ({self.block_size}) must be at "
                "least 1"
            )
        if self.max_concurrent_batches < 1 or (
            self.max_num_batched_tokens % self.max_concurrent_batches
        ):
            raise ValueError(
                f"max_concurrent_batches ({self.max_concurrent_batches}) must be at least 1 and "
                f"divide max_num_batched_tokens ({self.max_num_batched_tokens}): the round's "
                "budget is one per batch in flight"
            )
        if self.policy not in POLICIES:
            raise ValueError(f"policy {self.policy!r}: use one of {', '.join(POLICIES)}")
        if self.num_speculative_tokens < 0 or not 0.0 <= self.acceptance_rate <= 1.0:
            raise ValueError(
                f"num_speculative_tokens ({self.num_speculative_tokens}) must be at least 0 and "
                f"acceptance_rate ({self.acceptance_rate}) in [0, 1]"
            )

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
    batched_tokens: int = 0  # tokens the steps ran, drafts verified included (vllm_v1)
    draft_tokens: int = 0  # drafts verified (vllm_v1 speculative)
    accepted_tokens: int = 0  # drafts accepted (vllm_v1 speculative)
    verify_steps: int = 0  # a sequence's verify of its drafts, one per sequence and step
    cohort_rounds: int = 0  # vllm_v1, pp > 1: rounds that decoded (or verified)
    cohort_max_sum: float = 0.0  # their largest micro-batch's decodes, summed over rounds
    cohort_ratio_sum: float = 0.0  # largest / mean micro-batch decodes, summed over rounds

    def count_decodes(self, batch: int, context: float) -> None:
        """Count a step that decoded ``batch`` sequences attending ``context`` keys in all."""
        self.decode_steps += 1
        self.decode_batch_sum += batch
        self.decode_context_sum += context

    def count_cohorts(self, per_batch: list[int] | tuple[int, ...], rounds: int = 1) -> None:
        """Count ``rounds`` rounds whose micro-batches decoded ``per_batch`` sequences each."""
        n = sum(per_batch)
        if n:
            self.cohort_rounds += rounds
            self.cohort_max_sum += rounds * max(per_batch)
            self.cohort_ratio_sum += rounds * max(per_batch) * len(per_batch) / n

    @property
    def makespan_s(self) -> float:
        """When the last request finished (0 without requests)."""
        return max((r.finish_s for r in self.requests), default=0.0)


def arrivals(env: simpy.Environment, requests: list[Request], queue: simpy.Store):
    """Put each request on the engine's queue at its arrival time (both engines' feed)."""
    for r in requests:
        if r.arrival_s > env.now:
            yield env.timeout(r.arrival_s - env.now)
        queue.put(r)


def cohort_extras(log: ServerLog, pp: int) -> dict[str, float]:
    """How uneven the vllm_v1 cohorts were over the rounds that decoded (pp > 1): the mean
    micro-batch (decodes per round / pp, what an even split runs), the largest micro-batch (the
    one whose traversal a decode round waits for) averaged over rounds, and the mean of their
    ratio (1 when every round is even, pp when every round's decodes ride one batch)."""
    rounds = log.cohort_rounds
    return {
        "rounds": rounds,
        "mean_microbatch_decodes": log.decode_batch_sum / log.decode_steps / pp,
        "max_microbatch_decodes": log.cohort_max_sum / rounds,
        "max_over_mean": log.cohort_ratio_sum / rounds,
    }
