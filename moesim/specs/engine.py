"""The serving engine's scheduler knobs, named as vLLM names them: one declaration for the
serving workload (``InferenceWorkload``) and the GRPO/PPO rollout engine
(``workload.rollout_engine``), so both accept the same names and refuse the same mistakes.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from moesim.specs.base import Fraction, PositiveInt, Spec

#: prompt tokens one prefill step takes by default: vLLM V1's max_num_batched_tokens for its
#: OpenAI server on GPUs of >= 70 GiB other than the A100 (vllm/engine/arg_utils.py,
#: EngineArgs.get_batch_defaults; 2048 on smaller GPUs)
DEFAULT_MAX_PREFILL_TOKENS = 8192

#: the rollout engine's limits by default: verl's rollout config
#: (verl/trainer/config/rollout/rollout.yaml: ``max_num_seqs: 1024``,
#: ``max_num_batched_tokens: 8192``), which verl hands to vLLM as its engine arguments
ROLLOUT_MAX_NUM_SEQS = 1024
ROLLOUT_MAX_NUM_BATCHED_TOKENS = 8192


class EngineKnobs(Spec):
    """How an engine schedules: the scheduler, its sequence and token limits (under moesim's
    names and vLLM's), the memory it may take and its KV block size."""

    #: where the fields sit in a scenario file (for the messages)
    _where: ClassVar[str] = "workload"

    scheduler: Literal["vllm_v1", "prefill_first"] = Field(
        "vllm_v1",
        description="vllm_v1: a token budget per step shared by running decodes (first) and "
        "chunked prefills, paged KV cache, preemption (recompute) when it runs out; "
        "prefill_first: prefill and decode steps alternate, each request reserves its whole KV "
        "at admission (moesim's earlier engine)",
    )
    max_batch_size: PositiveInt = Field(
        256,
        description="continuous-batching slot limit: sequences started and not finished "
        "(vLLM's max_num_seqs; that name is accepted too)",
    )
    max_prefill_tokens: PositiveInt = Field(
        DEFAULT_MAX_PREFILL_TOKENS,
        description="tokens per engine step (vLLM's max_num_batched_tokens; that name is "
        "accepted too): decodes and prompt chunks under vllm_v1, prompt tokens per prefill step "
        "under prefill_first; longer prompts are chunked over steps. With pp > 1 each of the pp "
        "batches in flight has this budget",
    )
    max_num_seqs: PositiveInt | None = Field(
        None, description="vLLM's name of max_batch_size (give one of the two)"
    )
    max_num_batched_tokens: PositiveInt | None = Field(
        None, description="vLLM's name of max_prefill_tokens (give one of the two)"
    )
    gpu_memory_utilization: Fraction | None = Field(
        None,
        description="fraction of HBM the engine may use (vLLM's flag); the KV pool is that "
        "minus weights, activations and the reserve. Default: all of HBM (the reserve, "
        "cluster.gpu_memory_reserve_GB, is still taken out)",
    )
    block_size: PositiveInt = Field(
        16, description="tokens per KV-cache block (vLLM's block_size; vllm_v1 pages by it)"
    )

    @model_validator(mode="before")
    @classmethod
    def _engine_names(cls, data: object) -> object:
        """vLLM's max_num_seqs / max_num_batched_tokens fill max_batch_size /
        max_prefill_tokens (one name of each pair)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for engine, ours in (
            ("max_num_seqs", "max_batch_size"),
            ("max_num_batched_tokens", "max_prefill_tokens"),
        ):
            if out.get(engine) is not None:
                if out.get(ours) is not None and out[ours] != out[engine]:
                    raise ValueError(
                        f"{cls._where}.{engine} ({out[engine]}) and {cls._where}.{ours} "
                        f"({out[ours]}) name the same limit: give one of them"
                    )
                out[ours] = out[engine]
        return out


class RolloutEngineSpec(EngineKnobs):
    """The GRPO/PPO rollout engine: the vLLM V1 engine verl and NeMo RL generate with (verl's
    ``actor_rollout_ref.rollout.name: vllm``, NeMo RL's ``policy.generation.backend: vllm``;
    V1 always chunks prefills, verl's ``enable_chunked_prefill`` defaults on). Limits default
    to verl's rollout config; ``gpu_memory_utilization`` defaults to what is left of HBM
    beside whatever stays resident (verl sets 0.5, NeMo RL's GRPO configs 0.6: give theirs to
    size the pool as they do)."""

    _where: ClassVar[str] = "workload.rollout_engine"

    max_batch_size: PositiveInt = Field(
        ROLLOUT_MAX_NUM_SEQS,
        description="sequences a rollout replica runs at once (vLLM's max_num_seqs, that name "
        "accepted too; default 1024 as verl's rollout config); prefill_first also caps it at "
        "the sequences whose whole KV fits",
    )
    max_prefill_tokens: PositiveInt = Field(
        ROLLOUT_MAX_NUM_BATCHED_TOKENS,
        description="tokens per engine step (vLLM's max_num_batched_tokens, that name accepted "
        "too; default 8192 as verl's rollout config): decodes and prompt chunks under vllm_v1, "
        "prompt tokens per prefill step under prefill_first; with pp > 1 each of the pp batches "
        "in flight has this budget",
    )
    gpu_memory_utilization: Fraction | None = Field(
        None,
        description="fraction of HBM the rollout engine may use for its weights and KV pool "
        "(vLLM's flag; verl's rollout config sets 0.5, NeMo RL's 0.6). Default: what is left of "
        "HBM beside everything resident during the rollout (training states as sleep_level and "
        "offload_optimizer leave them, the reserve)",
    )
