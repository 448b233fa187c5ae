"""The training workloads (pretrain, SFT, DPO) and the LoRA adapters they and the RL stages
may train. Batch sizes count sequences per optimizer step (pairs for DPO).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from moesim.specs.base import Float, Fraction, PositiveFloat, PositiveInt, Spec

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
