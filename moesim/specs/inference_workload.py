"""The serving workload: a static batch, Poisson arrivals or a replayed request trace through
a serving engine, with its latency targets.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from moesim.specs.base import Float, NonNegativeInt, PositiveFloat, PositiveInt, Spec
from moesim.specs.engine import EngineKnobs
from moesim.specs.lengths import Length, max_length, mean_length
from moesim.specs.parallel import MoEDispatcher
from moesim.specs.request_trace import read_request_trace
from moesim.specs.serving import DisaggregatedSpec, SpeculativeSpec

# Input limits: the simulator times every request these count, so a value past them runs for
# minutes and gigabytes with no answer worth the wait (issue 16). Measured on this project's
# 2-core machine, Mixtral 8x7B on one node: a static batch of 100,000 in 4.6 s, 1,000,000
# Poisson requests in 16 s.
MAX_SERVING_BATCH = 100_000
MAX_POISSON_REQUESTS = 1_000_000


class ServingSLO(Spec):
    """Per-request latency targets of a serving deployment."""

    ttft_s: PositiveFloat | None = Field(None, description="time to first token at most")
    tpot_s: PositiveFloat | None = Field(
        None, description="time per output token (after the first) at most"
    )


class InferenceWorkload(EngineKnobs):
    """Serving: a static batch, Poisson arrivals, or a replayed request trace (exactly one).
    The engine's knobs (scheduler, max_batch_size / max_num_seqs, max_prefill_tokens /
    max_num_batched_tokens, gpu_memory_utilization, block_size) come from ``EngineKnobs``."""

    stage: Literal["inference"] = "inference"
    prompt_len: Length = Field(
        1024,
        description="prompt tokens of a request: a number, or a distribution "
        "({distribution: lognormal, mean: ..., p99: ...}, uniform, empirical)",
    )
    output_len: Length = Field(
        256, description="output tokens of a request: a number or a distribution (as prompt_len)"
    )
    batch_size: PositiveInt | None = Field(
        None,
        le=MAX_SERVING_BATCH,
        description=f"static batch: this many requests per replica, all at t=0 (at most "
        f"{MAX_SERVING_BATCH:,}; each sequence's routing is drawn, ~5 s at the limit)",
    )
    arrival_rate_per_s: PositiveFloat | None = Field(
        None,
        description=f"Poisson request rate of the whole deployment, split over replicas (rate "
        f"× duration_s at most {MAX_POISSON_REQUESTS:,} requests: each is simulated, ~15 s at "
        "the limit)",
    )
    trace: str | None = Field(
        None,
        description="replay a request trace: a CSV/JSONL file with arrival_s, prompt_len, "
        "output_len (or Azure's TIMESTAMP, ContextTokens, GeneratedTokens), relative to the "
        "scenario file; requests go round-robin to the replicas",
    )
    duration_s: PositiveFloat = Field(
        60.0,
        description="how long requests arrive (Poisson); with a trace, the throughput window "
        "(default: the trace's span)",
    )
    prefix_hit_rate: Float = Field(
        0.0,
        ge=0,
        lt=1,
        description="fraction of each prompt's tokens found in the prefix cache: not "
        "recomputed, their KV shared (vllm_v1 and prefill_first)",
    )
    slo: ServingSLO | None = Field(
        None,
        description="latency targets; the result counts goodput_requests_per_s, the requests "
        "meeting all of them per second",
    )
    expert_offload: bool = Field(False, description="experts live in host memory, fetched on PCIe")
    seed: NonNegativeInt = Field(
        0,
        description="seeds arrivals, length draws and (vllm_v1) the speculative acceptance draws",
    )
    total_tokens: PositiveFloat | None = Field(None, description="output tokens to cost")
    two_batch_overlap: bool = Field(
        False,
        description="split each step in two micro-batches so one's MoE dispatch/combine runs "
        "under the other's compute (SGLang's --enable-two-batch-overlap, vLLM's dual batch "
        "overlap); a step is split only when that is faster (vLLM splits above a token "
        "threshold)",
    )
    decode_moe_dispatcher: MoEDispatcher | None = Field(
        None,
        description="the MoE dispatcher of decode steps when it differs from prefill's "
        "(parallel.moe_dispatcher): e.g. deepep in prefill and deepep_low_latency in decode, as "
        "SGLang's --deepep-mode auto switches between DeepEP's normal and low-latency modes",
    )
    speculative: SpeculativeSpec | None = Field(
        None,
        description="speculative decoding: {method: mtp | draft, draft_model, "
        "num_speculative_tokens, acceptance_rate}; under either scheduler (vllm_v1: drafts in "
        "the token budget and KV, acceptances drawn per request and step) and on a "
        "disaggregated decode pool",
    )
    disaggregated: DisaggregatedSpec | None = Field(
        None,
        description="prefill/decode disaggregation: {prefill: {gpus | nodes, tp, pp, ep, etp, "
        "moe_dispatcher}, decode: {...}}: separate pools, the prompt's KV cache sent from the "
        "prefill replica to the decode replica (needs arrival_rate_per_s or a trace); each "
        "pool's KV cache is paged under scheduler vllm_v1, the decode pool preempting when it "
        "runs out",
    )

    @field_validator("trace")
    @classmethod
    def _absolute_trace(cls, value: str | None, info: ValidationInfo) -> str | None:
        base = (info.context or {}).get("base_dir") if info.context else None
        if value is None or Path(value).is_absolute() or base is None:
            return value
        return str(Path(base) / value)

    @model_validator(mode="after")
    def _check(self) -> InferenceWorkload:
        given = [self.batch_size, self.arrival_rate_per_s, self.trace]
        if sum(x is not None for x in given) != 1:
            raise ValueError(
                "inference needs exactly one of workload.batch_size (static batch), "
                "workload.arrival_rate_per_s (Poisson arrivals) or workload.trace (a request "
                "trace file)"
            )
        if self.arrival_rate_per_s is not None:
            expected = self.arrival_rate_per_s * self.duration_s
            if expected > MAX_POISSON_REQUESTS:
                raise ValueError(
                    f"workload.arrival_rate_per_s × duration_s = {expected:,.0f} requests, over "
                    f"the limit of {MAX_POISSON_REQUESTS:,} (each request is simulated): "
                    "shorten duration_s (a steady state shows within seconds of arrivals)"
                )
        if self.disaggregated is not None and self.batch_size is not None:
            raise ValueError(
                "workload.disaggregated serves a stream of requests: give "
                "workload.arrival_rate_per_s (and duration_s) or a workload.trace instead of "
                "batch_size"
            )
        if self.trace is not None:
            read_request_trace(self.trace)  # an unreadable trace is an error now
        return self

    @property
    def seq_len(self) -> int:
        """Tokens of a mean sequence (prompt + output; a trace's mean): what the KV capacity in
        sequences counts. Fixed lengths: prompt_len + output_len."""
        return math.ceil(self.mean_prompt_len + self.mean_output_len)

    @property
    def mean_prompt_len(self) -> float:
        if self.trace is not None:
            return float(read_request_trace(self.trace).prompt_tokens.mean())
        return mean_length(self.prompt_len)

    @property
    def max_output_len(self) -> int:
        if self.trace is not None:
            return int(read_request_trace(self.trace).output_tokens.max())
        return max_length(self.output_len)

    @property
    def mean_output_len(self) -> float:
        if self.trace is not None:
            return float(read_request_trace(self.trace).output_tokens.mean())
        return mean_length(self.output_len)
