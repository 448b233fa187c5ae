"""ParallelSpec: how a model is split over GPUs (Megatron-Core's vocabulary).

Attention ranks form a tp × cp × pp × dp grid. Expert layers fold the same GPUs of one pipeline
stage into ep × etp × edp (expert-data-parallel) with ep · etp · edp = tp · cp · dp, so ``ep`` may
exceed ``dp`` (MoE Parallel Folding, Megatron-Core).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from moesim.specs.base import NonNegativeInt, PositiveInt, Spec, ZeroStage
from moesim.specs.pipeline_layout import parse_layout

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
MoEDispatcher = Literal["auto", "alltoall", "allgather", "deepep", "deepep_low_latency"]
# dispatchers Megatron-Core's EP overlap runs with: its ``alltoall`` and ``flex`` (DeepEP)
# token dispatchers (megatron/core/transformer/transformer_config.py)
EP_OVERLAP_DISPATCHERS = ("auto", "alltoall", "deepep")
PipelineBalance = Literal["even", "auto"]
#: the dimensions ``parallel.order`` places (Megatron-Core's RankGenerator), fastest first
ORDER_DIMS = ("tp", "cp", "ep", "dp", "pp")
DEFAULT_ORDER = "tp-cp-ep-dp-pp"


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
    activation_offload_layers: NonNegativeInt = Field(
        0,
        description="decoder layers per model chunk (its first ones) whose activations go to "
        "host memory in the forward and come back for the backward (Megatron-Core "
        "--cpu-offloading-num-layers, Transformer Engine's CPU offload: copies on their own "
        "streams over PCIe, overlapped with compute, each layer prefetched while the one "
        "after it runs its backward); fewer than the layers of every chunk",
    )
    schedule: Schedule = "1f1b"
    sequence_parallel: bool = Field(True, description="shard norms/dropout over tp (Megatron SP)")
    moe_dispatcher: MoEDispatcher = Field(
        "auto",
        description="how MoE tokens reach their experts: alltoall (Megatron's all-to-all "
        "dispatcher, one copy per (token, expert)); allgather (Megatron's: every EP rank "
        "gathers the group's tokens and keeps its experts' rows, combine = reduce-scatter); "
        "deepep (DeepEP normal kernels: one copy per destination GPU over NVLink and one per "
        "destination node over RDMA, forwarded over NVLink); deepep_low_latency (DeepEP's "
        "decode kernels: per-expert copies sent directly, no forwarding, no SMs); auto = "
        "simulation.all_to_all when it is set (direct: alltoall, hierarchical: deepep), else "
        "deepep when it sends fewer bytes than alltoall (a token's top-k experts share GPUs, "
        "or the EP group spans nodes) and alltoall otherwise (moesim.analytic.dispatch)",
    )
    moe_comm_sms: NonNegativeInt | None = Field(
        None,
        description="SMs the dispatch/combine kernels occupy while they run; compute that "
        "overlaps them runs at (SMs - moe_comm_sms)/SMs of its speed. None = as the kernels "
        "ship: deepep 20 (DeepEP's Buffer.num_sms), deepep_low_latency 0 (hook-based receive), "
        "alltoall/allgather 0 (NCCL's SMs are not modelled for any collective)",
    )
    overlap_moe_expert_parallel_comm: bool = Field(
        False,
        description="Megatron-Core's EP overlap: in the steady state a forward chunk and a "
        "backward chunk of different microbatches run together, so each one's all-to-alls "
        "run under the other's compute (needs ep > 1, interleaved_1f1b when pp > 1, the "
        "alltoall or deepep dispatcher, no full recompute); DualPipe overlaps regardless",
    )
    first_stage_layers: PositiveInt | None = Field(
        None,
        description="decoder layers on the first pipeline rank (Megatron-Core "
        "--decoder-first-pipeline-num-layers); the other ranks share the rest evenly",
    )
    last_stage_layers: PositiveInt | None = Field(
        None,
        description="decoder layers on the last pipeline rank (Megatron-Core "
        "--decoder-last-pipeline-num-layers); the other ranks share the rest evenly",
    )
    account_for_embedding: bool = Field(
        False,
        description="the embedding counts as one layer in the pipeline split (Megatron-Core "
        "--account-for-embedding-in-pipeline-split): the first chunk holds one decoder layer less",
    )
    account_for_loss: bool = Field(
        False,
        description="the LM head and loss count as one layer in the pipeline split (Megatron-Core "
        "--account-for-loss-in-pipeline-split): the last chunk holds one decoder layer less",
    )
    pipeline_layout: str | None = Field(
        None,
        description="Megatron-Core --pipeline-model-parallel-layout: E embedding, t decoder layer, "
        "m MTP layer, L loss (LM head), '|' between virtual stages (stage i on rank i % pp), "
        "repeats as 't*3' and '(tt|)*7', e.g. 'Et*3|(tt|)*29m|L'",
    )
    pipeline_balance: PipelineBalance = Field(
        "even",
        description="even: layers split evenly (or as the fields above say); auto: the layout "
        "whose slowest pipeline stage is fastest among those that fit in memory (the result "
        "names it in pipeline_layout)",
    )

    order: str = Field(
        DEFAULT_ORDER,
        description="placement of the parallel dimensions on global ranks, fastest-varying "
        "first (Megatron-Core's --order / RankGenerator): a permutation of tp, cp, ep, dp, pp "
        "joined by '-'. Attention ranks use it without ep, expert ranks without cp (tp read "
        "as etp, dp as edp). The default tp-cp-ep-dp-pp keeps TP inside a node; "
        "dp-tp-cp-ep-pp spreads TP across nodes. The result's placement field says where "
        "each group lands",
    )

    @model_validator(mode="after")
    def _check(self) -> ParallelSpec:
        self._check_order()
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
        if self.overlap_moe_expert_parallel_comm:
            self._check_ep_overlap()
        self._check_layout_fields()
        return self

    def _check_order(self) -> None:
        dims = self.order.split("-")
        if sorted(dims) != sorted(ORDER_DIMS):
            raise ValueError(
                f"parallel.order {self.order!r} must be a permutation of tp, cp, ep, dp, pp "
                f"joined by '-', each once (e.g. {DEFAULT_ORDER!r})"
            )

    @property
    def order_dims(self) -> tuple[str, ...]:
        """``order`` as a tuple of dimension names, fastest-varying first."""
        return tuple(self.order.split("-"))

    def _check_ep_overlap(self) -> None:
        """Megatron-Core's requirements for ``overlap_moe_expert_parallel_comm``
        (megatron/core/transformer/transformer_config.py, its __post_init__)."""
        field = "parallel.overlap_moe_expert_parallel_comm"
        if self.ep == 1:
            raise ValueError(f"{field} needs expert parallelism: set parallel.ep > 1")
        if self.pp > 1 and self.schedule not in ("interleaved_1f1b", "dualpipe"):
            raise ValueError(
                f"{field} with pp > 1 needs virtual pipeline stages (Megatron-Core): set "
                "parallel.schedule: interleaved_1f1b and virtual_stages ≥ 2"
            )
        if self.moe_dispatcher not in EP_OVERLAP_DISPATCHERS:
            raise ValueError(
                f"{field} runs with the alltoall or deepep dispatcher, not "
                f"parallel.moe_dispatcher {self.moe_dispatcher!r}: change one of them"
            )
        if self.recompute == "full":
            raise ValueError(
                f"{field} cannot run with parallel.recompute: full (Megatron-Core refuses "
                "it): use selective or none"
            )

    @property
    def recomputed_modules(self) -> frozenset[str]:
        """What a selective recomputation repeats (empty for none; full repeats all)."""
        if self.recompute != "selective":
            return frozenset()
        return frozenset(self.recompute_modules or SELECTIVE_MODULES)

    def _check_layout_fields(self) -> None:
        """Megatron-Core's exclusions (TransformerConfig.__post_init__): a layout string takes
        no other layout option; first/last stage layers take no account_for_*."""
        uneven = self.first_stage_layers is not None or self.last_stage_layers is not None
        account = self.account_for_embedding or self.account_for_loss
        if self.pipeline_layout is not None:
            others = [
                name
                for name, on in (
                    ("first_stage_layers", self.first_stage_layers is not None),
                    ("last_stage_layers", self.last_stage_layers is not None),
                    ("account_for_embedding", self.account_for_embedding),
                    ("account_for_loss", self.account_for_loss),
                    ("pipeline_balance: auto", self.pipeline_balance == "auto"),
                )
                if on
            ]
            if others:
                raise ValueError(
                    f"parallel.pipeline_layout places every layer itself: remove "
                    f"{', '.join(others)}"
                )
            parse_layout(self.pipeline_layout)  # syntax; counts are checked against the model
        if uneven and account:
            raise ValueError(
                "parallel.first_stage_layers/last_stage_layers cannot be combined with "
                "account_for_embedding/account_for_loss (Megatron-Core forbids it): keep one"
            )
        if (uneven or account) and self.pipeline_balance == "auto":
            raise ValueError(
                "parallel.pipeline_balance: auto chooses the split itself: remove "
                "first_stage_layers, last_stage_layers and account_for_* or set it to even"
            )
        if (uneven or account) and self.pp == 1:
            raise ValueError(
                "parallel.first_stage_layers/last_stage_layers/account_for_* need pp ≥ 2: "
                "remove them or raise pp"
            )
        for name in ("first_stage_layers", "last_stage_layers"):
            n = getattr(self, name)
            if n is not None and n % self.virtual_stages:
                raise ValueError(
                    f"parallel.{name} ({n}) must be a multiple of virtual_stages "
                    f"({self.virtual_stages}): each chunk of that rank holds the same count"
                )

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
