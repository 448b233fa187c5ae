"""ParallelSpec: how a model is split over GPUs (Megatron-Core's vocabulary).

Attention ranks form a tp × cp × pp × dp grid. Expert layers fold the same GPUs of one pipeline
stage into ep × etp × edp (expert-data-parallel) with ep · etp · edp = tp · cp · dp, so ``ep`` may
exceed ``dp`` (MoE Parallel Folding, Megatron-Core).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from moesim.specs.base import PositiveInt, Spec, ZeroStage

Recompute = Literal["none", "selective", "full"]
#: Megatron-Core's ``--recompute-modules`` (TransformerConfig.recompute_modules): what a
#: ``selective`` recomputation repeats in the backward pass instead of keeping.
RecomputeModule = Literal[
    "core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts"
]
#: moesim's ``selective`` when no modules are named: the set DeepSeek-V3 describes (report
#: §3.2.3: RMSNorm, MLA up-projections, SwiGLU outputs). Megatron's own default is core_attn.
SELECTIVE_MODULES: frozenset[str] = frozenset({"layernorm", "moe_act", "mla_up_proj"})
Schedule = Literal["gpipe", "1f1b", "interleaved_1f1b", "dualpipe"]


class ParallelSpec(Spec):
    tp: PositiveInt = Field(1, description="tensor parallel (with sequence parallelism)")
    pp: PositiveInt = Field(1, description="pipeline stages")
    dp: PositiveInt | None = Field(None, description="data parallel; None = gpus / (tp·cp·pp)")
    cp: PositiveInt = Field(1, description="context parallel (sequence split for attention)")
    ep: PositiveInt = Field(1, description="expert parallel")
    etp: PositiveInt = Field(1, description="expert tensor parallel")
    zero_stage: ZeroStage = Field(1, description="ZeRO / distributed optimizer stage")
    microbatch_size: PositiveInt = 1
    virtual_stages: PositiveInt = Field(1, description="model chunks per pipeline rank")
    recompute: Recompute = "selective"
    recompute_modules: list[RecomputeModule] | None = Field(
        None,
        description="with recompute: selective, the modules repeated in the backward pass "
        "instead of kept (Megatron-Core's --recompute-modules): core_attn (attention core), "
        "moe_act (the activation function of every FFN: experts, shared, dense), layernorm, "
        "mla_up_proj, mlp (a dense layer's whole FFN), moe (the whole MoE block, its "
        "all-to-alls included), shared_experts; default layernorm, moe_act, mla_up_proj",
    )
    schedule: Schedule = "1f1b"
    sequence_parallel: bool = Field(True, description="shard norms/dropout over tp (Megatron SP)")

    @model_validator(mode="after")
    def _check(self) -> ParallelSpec:
        if self.schedule == "interleaved_1f1b" and self.virtual_stages < 2:
            raise ValueError(
                "schedule 'interleaved_1f1b' needs virtual_stages ≥ 2: set parallel.virtual_stages"
            )
        if self.recompute_modules is not None:
            if self.recompute != "selective":
                raise ValueError(
                    f"recompute_modules needs recompute: selective (got recompute: "
                    f"{self.recompute}): set parallel.recompute: selective or drop "
                    "parallel.recompute_modules"
                )
            if not self.recompute_modules:
                raise ValueError(
                    "recompute_modules is empty: name at least one module, or set "
                    "parallel.recompute: none"
                )
            if len(set(self.recompute_modules)) != len(self.recompute_modules):
                raise ValueError("recompute_modules names a module twice: list each once")
        if self.virtual_stages > 1 and self.schedule != "interleaved_1f1b":
            raise ValueError(
                f"virtual_stages = {self.virtual_stages} needs schedule: interleaved_1f1b"
            )
        return self

    @property
    def recomputed_modules(self) -> frozenset[str]:
        """What a selective recomputation repeats (empty for none; full repeats all)."""
        if self.recompute != "selective":
            return frozenset()
        return frozenset(self.recompute_modules or SELECTIVE_MODULES)

    @property
    def dp_size(self) -> int:
        if self.dp is None:
            raise ValueError("parallel.dp is not resolved yet: build it through a Scenario")
        return self.dp

    @property
    def model_parallel(self) -> int:
        """GPUs holding one replica of the dense part: tp · cp · pp."""
        return self.tp * self.cp * self.pp

    @property
    def edp(self) -> int:
        """Expert data parallel: replicas of each expert shard inside a pipeline stage."""
        return self.tp * self.cp * self.dp_size // (self.ep * self.etp)

    @property
    def gpus(self) -> int:
        return self.tp * self.cp * self.pp * self.dp_size
