"""Workload: what the cluster does, one class per stage, discriminated by ``stage``.

Batch sizes count sequences per optimizer step: pairs for DPO, prompts for GRPO/PPO. The
stages' classes live by kind: training (``training_workload``: pretrain, SFT, DPO, LoRA), RL
(``rl_workload``: GRPO, PPO) and serving (``inference_workload``); here the union a scenario's
``workload`` takes, and the two single-operation stages (one MoE layer, one collective).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from moesim.specs.base import Float, PositiveFloat, PositiveInt, Spec
from moesim.specs.engine import DEFAULT_MAX_PREFILL_TOKENS
from moesim.specs.inference_workload import InferenceWorkload
from moesim.specs.rl_workload import GRPOWorkload, PPOWorkload, RolloutParallelSpec
from moesim.specs.training_workload import DPOWorkload, LoRASpec, PretrainWorkload, SFTWorkload

# the names other modules import from here (moesim.specs re-exports the workloads)
__all__ = [
    "DEFAULT_MAX_PREFILL_TOKENS",
    "TRAINING_STAGES",
    "CollectiveWorkload",
    "DPOWorkload",
    "GRPOWorkload",
    "InferenceWorkload",
    "LoRASpec",
    "MoELayerWorkload",
    "PPOWorkload",
    "PretrainWorkload",
    "RolloutParallelSpec",
    "SFTWorkload",
    "Workload",
]


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
