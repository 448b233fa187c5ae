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
    schedule: Schedule = "1f1b"
    sequence_parallel: bool = Field(True, description="shard norms/dropout over tp (Megatron SP)")

    @model_validator(mode="after")
    def _check(self) -> ParallelSpec:
        if self.schedule == "interleaved_1f1b" and self.virtual_stages < 2:
            raise ValueError(
                "schedule 'interleaved_1f1b' needs virtual_stages ≥ 2: set parallel.virtual_stages"
            )
        if self.virtual_stages > 1 and self.schedule != "interleaved_1f1b":
            raise ValueError(
                f"virtual_stages = {self.virtual_stages} needs schedule: interleaved_1f1b"
            )
        return self

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
