"""Workload: what the cluster does, one class per stage, discriminated by ``stage``.

Batch sizes count sequences per optimizer step: pairs for DPO, prompts for GRPO/PPO.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from moesim.specs.base import (
    NO_BOOL_INT,
    Float,
    Fraction,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Spec,
)
from moesim.specs.engine import (
    DEFAULT_MAX_PREFILL_TOKENS,  # noqa: F401  (imported from here)
    EngineKnobs,
    RolloutEngineSpec,
)
from moesim.specs.lengths import Length, max_length, mean_length
from moesim.specs.model import ModelSpec
from moesim.specs.parallel import MoEDispatcher
from moesim.specs.request_trace import read_request_trace
from moesim.specs.serving import DisaggregatedSpec, SpeculativeSpec

# Input limits: the simulator times every sequence or request these count, so a value past
# them runs for minutes and gigabytes with no answer worth the wait (issue 16). Measured on
# this project's 2-core machine, Mixtral 8x7B on one node: a static batch of 100,000 in 4.6 s,
# 1,000,000 Poisson requests in 16 s; GRPO with 128 prompts x 1,000 responses took 50 s.
MAX_SERVING_BATCH = 100_000
MAX_POISSON_REQUESTS = 1_000_000
MAX_GROUP_SIZE = 1024

LoRATarget = Literal["attention", "mlp", "experts_shared", "experts_per_expert", "router"]


class LoRASpec(Spec):
    """Low-rank adapters (Hu et al. 2021): W + B·A with A: r×in, B: out×r on each target.

    ``experts_shared``: one adapter per expert projection shared by all experts of a layer;
    ``experts_per_expert``: one adapter per expert.
    """

    rank: PositiveInt = 16
    alpha: Float = 32.0
    targets: list[LoRATarget] = Field(default_factory=lambda: ["attention"])


class _Training(Spec):
    seq_len: PositiveInt = 4096
    global_batch: PositiveInt = Field(description="sequences per optimizer step")
    total_tokens: PositiveFloat | None = Field(None, description="turns step time into cost")


class PretrainWorkload(_Training):
    stage: Literal["pretrain"] = "pretrain"


class SFTWorkload(_Training):
    stage: Literal["sft"] = "sft"
    packing_efficiency: Fraction = Field(
        1.0, description="fraction of each packed sequence holding real tokens"
    )
    prompt_fraction: Float = Field(
        0.0, ge=0, lt=1, description="fraction of tokens that are prompt (masked out of the loss)"
    )
    lora: LoRASpec | None = None


class DPOWorkload(_Training):
    stage: Literal["dpo"] = "dpo"
    global_batch: PositiveInt = Field(description="preference pairs per optimizer step")
    reference: Literal["live", "precomputed"] = "live"
    beta: PositiveFloat = 0.1
    lora: LoRASpec | None = None


class RolloutParallelSpec(Spec):
    """The rollout engine's layout when it differs from training's (veRL's rollout
    ``tensor_model_parallel_size``, TRL's ``vllm_tensor_parallel_size``). A size left out is the
    training layout's; dp is the rollout GPUs over tp·pp, and a rollout never uses cp (decode
    does not split a sequence: training's cp GPUs serve as more replicas) nor ZeRO."""

    tp: PositiveInt | None = Field(None, description="rollout tensor parallel")
    pp: PositiveInt | None = Field(None, description="rollout pipeline stages")
    ep: PositiveInt | None = Field(None, description="rollout expert parallel")
    etp: PositiveInt | None = Field(None, description="rollout expert tensor parallel")


class _RL(Spec):
    global_batch: PositiveInt = Field(description="prompts per optimizer step (kept for training)")
    prompt_len: Length = Field(
        512,
        description="prompt tokens: a number, or a distribution ({distribution: lognormal, "
        "mean: ..., p99: ...}, uniform, empirical; moesim.specs.lengths)",
    )
    response_len: Length = Field(
        1024,
        description="tokens each response decodes: a number (every response runs to it), or a "
        "distribution (each response drawn: the rollout waits for its longest, the tail)",
    )
    seed: NonNegativeInt = Field(0, description="seed of the prompt and response length draws")
    total_tokens: PositiveFloat | None = None
    rollout: Literal["colocated", "disaggregated"] = "colocated"
    rollout_gpus: PositiveInt | None = Field(
        None, description="GPUs that only generate (disaggregated); default: as many as training"
    )
    rollout_parallel: RolloutParallelSpec | None = Field(
        None,
        description="the rollout engine's tp/pp/ep/etp (default: training's); a different one "
        "reshards the weights at every sync",
    )
    rollout_engine: RolloutEngineSpec = Field(
        default_factory=RolloutEngineSpec,
        description="the rollout's serving engine, as serving names its knobs: {scheduler: "
        "vllm_v1 | prefill_first (default vllm_v1, the vLLM V1 engine verl and NeMo RL generate "
        "with), max_num_seqs (alias max_batch_size, default 1024), max_num_batched_tokens "
        "(alias max_prefill_tokens, default 8192: verl's rollout config), "
        "gpu_memory_utilization (default: what is left of HBM), block_size (16)}",
    )
    ppo_epochs: PositiveInt = Field(1, description="optimizer passes over each batch of rollouts")
    off_policy_steps: NonNegativeInt = Field(
        0,
        description="how many steps the rollout may run ahead of training (0: synchronous; 1: "
        "the rollout of step n+1 overlaps the training of step n, as verl's one-step-off-policy "
        "and NeMo RL's async GRPO max_trajectory_age_steps). Overlaps only on separate GPUs "
        "(rollout: disaggregated); colocated engines share the GPUs and run one after the other",
    )
    oversample_ratio: Float = Field(
        1.0,
        ge=1,
        description="dynamic sampling (DAPO): prompts generated per prompt kept (groups whose "
        "rewards are all equal are dropped and more generated); the rollout and the reward run "
        "on all of them, the later phases on global_batch",
    )
    sleep_level: Annotated[Literal[0, 1, 2], NO_BOOL_INT] = Field(
        0,
        description="colocated: vLLM sleep mode between rollouts (0: the engine's weights and KV "
        "pool stay in HBM through training; 1: weights offloaded to host memory and KV "
        "discarded, both brought back over PCIe/reallocated for the next rollout; 2: weights "
        "and KV discarded, the weight sync refills them)",
    )
    offload_optimizer: bool = Field(
        False,
        description="colocated: the trained models' optimizer states go to host memory for the "
        "rollout and come back for training (verl's optimizer_offload), over PCIe each step",
    )
    lora: LoRASpec | None = None

    @model_validator(mode="after")
    def _check_rl(self) -> _RL:
        if self.rollout == "disaggregated" and (self.sleep_level or self.offload_optimizer):
            key = "sleep_level" if self.sleep_level else "offload_optimizer"
            raise ValueError(
                f"workload.{key} frees the training GPUs' memory for a colocated rollout engine; "
                "with rollout: disaggregated the engine has GPUs of its own: remove it"
            )
        return self

    @property
    def prompt_tokens(self) -> float:
        """Mean prompt tokens."""
        return mean_length(self.prompt_len)

    @property
    def response_tokens(self) -> float:
        """Mean response tokens (what a response holds on average: trained, costed)."""
        return mean_length(self.response_len)

    @property
    def max_seq_tokens(self) -> int:
        """The longest prompt + response a sequence can have."""
        return max_length(self.prompt_len) + max_length(self.response_len)

    @property
    def seq_len(self) -> int:
        """Tokens of an average sequence (prompt + response, means rounded): training phases
        pack sequences, so a step trains N × this many tokens; exact for fixed lengths."""
        return max(1, round(self.prompt_tokens + self.response_tokens))


class GRPOWorkload(_RL):
    stage: Literal["grpo"] = "grpo"
    group_size: PositiveInt = Field(
        8,
        le=MAX_GROUP_SIZE,
        description=f"responses sampled per prompt (at most {MAX_GROUP_SIZE:,}: papers use "
        "4-64, and every response is a rollout the simulator times)",
    )
    reward: Literal["rule", "model"] = "rule"
    reward_model: ModelSpec | None = Field(None, description="reward model (reward: model)")
    kl_coef: Float = Field(0.04, ge=0)

    @model_validator(mode="after")
    def _check(self) -> GRPOWorkload:
        if self.reward == "model" and self.reward_model is None:
            raise ValueError("workload.reward is 'model': name workload.reward_model")
        return self


class PPOWorkload(_RL):
    stage: Literal["ppo"] = "ppo"
    reward_model: ModelSpec | None = Field(None, description="default: the policy's architecture")
    critic_model: ModelSpec | None = Field(None, description="default: the policy's architecture")
    gae_lambda: Float = Field(0.95, ge=0, le=1)
    gamma: Float = Field(1.0, ge=0, le=1)


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


class MoELayerWorkload(Spec):
    stage: Literal["moe_layer"] = "moe_layer"
    tokens_per_gpu: PositiveInt = Field(description="tokens entering the layer on each GPU")
    passes: Literal["forward", "forward_backward"] = "forward"
    seq_len: PositiveInt = 4096
    total_tokens: PositiveFloat | None = None


class CollectiveWorkload(Spec):
    """One collective over all GPUs of the cluster, as nccl-tests runs it (one operation, timed
    alone): ``size_bytes`` is nccl-tests' "size", the whole buffer per rank (all-reduce: the
    buffer; all-gather: the output; reduce-scatter: the input; all-to-all: the send buffer)."""

    stage: Literal["collective"] = "collective"
    collective: Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all"] = Field(
        description="the operation (nccl-tests all_reduce_perf, all_gather_perf, "
        "reduce_scatter_perf, alltoall_perf)"
    )
    size_bytes: Float = Field(
        description="bytes per rank as nccl-tests prints 'size' (all_gather: output, "
        "reduce_scatter: input); at least 1"
    )

    @model_validator(mode="after")
    def _check(self) -> CollectiveWorkload:
        if not (self.size_bytes >= 1 and self.size_bytes < float("inf")):
            raise ValueError(
                f"workload.size_bytes must be a finite number of bytes ≥ 1 (nccl-tests 'size'), "
                f"got {self.size_bytes}"
            )
        return self


Workload = Annotated[
    PretrainWorkload
    | SFTWorkload
    | DPOWorkload
    | GRPOWorkload
    | PPOWorkload
    | InferenceWorkload
    | MoELayerWorkload
    | CollectiveWorkload,
    Field(discriminator="stage"),
]
TRAINING_STAGES = ("pretrain", "sft", "dpo", "grpo", "ppo")
