"""Result: what ``moesim simulate --json`` prints (the public contract in DESIGN.md).

Keys that do not apply to a stage are left out of the JSON (``exclude_none``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Post-training phases a step's ``time_breakdown_s`` may hold, in step order
#: (``moesim.sim.post_training``; PPO has them all, GRPO no old_logprobs/values/gae/critic; the
#: host copies only with colocated ``sleep_level`` / ``offload_optimizer``).
POST_TRAINING_PHASES = (
    "optimizer_offload", "engine_wake", "weight_sync", "rollout", "engine_sleep", "reward",
    "old_logprobs", "reference", "values", "gae", "optimizer_reload", "training",
    "critic_training",
)  # fmt: skip


class MemoryBreakdown(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    kv_cache: float = 0.0
    other: float = 0.0

    @property
    def total(self) -> float:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.kv_cache
            + self.other
        )

    def as_dict(self) -> dict[str, float]:
        d = self.model_dump()
        d["total"] = self.total
        return d


class TimeBreakdown(BaseModel):
    """Seconds per step a GPU spends on each kind of work; exposed_comm is what compute did not
    hide. compute + exposed_comm + bubble + imbalance (+ stage-specific extras) = step time."""

    model_config = ConfigDict(extra="allow")
    compute: float = 0.0
    all_to_all: float = 0.0
    tp_comm: float = 0.0
    cp_comm: float = 0.0  # context parallelism: ring attention's K/V (and dK/dV) exchange
    dp_comm: float = 0.0
    pp_comm: float = 0.0
    bubble: float = 0.0  # idle time of the schedule (fill and drain)
    imbalance: float = 0.0  # idle time waiting for a slower pipeline stage
    exposed_comm: float = 0.0


class Result(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    stage: str
    gpus: int
    params_total: float
    params_active: float
    model_flops_per_token: float
    step_time_s: float | None = None
    tokens_per_s: float | None = None
    tokens_per_s_per_gpu: float | None = None
    model_tflops_per_gpu: float | None = None
    mfu: float | None = None  # model FLOPs / the GPU's dense bf16 peak (PaLM convention)
    mfu_compute_dtype: float | None = None  # model FLOPs / the compute dtype's peak
    hfu: float | None = None  # model + recomputed FLOPs / the bf16 peak
    memory_per_gpu_GB: dict[str, float] = Field(default_factory=dict)
    fits_in_memory: bool | None = None
    time_breakdown_s: dict[str, float] = Field(default_factory=dict)
    gpu_hours: float | None = None
    cost_usd: float | None = None
    ttft_s_p50: float | None = None
    ttft_s_p99: float | None = None
    tpot_s_p50: float | None = None
    tpot_s_p99: float | None = None
    output_tokens_per_s: float | None = None
    dispatch_s: float | None = None
    combine_s: float | None = None
    expert_compute_s: float | None = None
    stages: list[dict[str, Any]] | None = Field(
        None,
        description="pipeline ranks (pp > 1): stage, layers (its layout, chunks split by '|'), "
        "compute_s, exposed_comm_s, idle_s (the three sum to the step time), memory_GB",
    )
    pipeline_layout: str | None = Field(
        None, description="the Megatron-Core layout string of the layout that ran (pp > 1)"
    )
    pipeline_balance: str | None = None  # "auto" when the layout was chosen by the simulator
    goodput: float | None = Field(
        None,
        description="with reliability: the useful fraction of a long run's wall time (and "
        "GPU-hours) once failures, checkpoint writes, lost work and restarts are counted "
        "(moesim.analytic.goodput); ≤ 1",
    )
    effective_tokens_per_s: float | None = Field(
        None, description="with reliability: tokens_per_s × goodput, the long run's pace"
    )
    effective_gpu_hours: float | None = Field(
        None,
        description="with reliability and total_tokens: GPU-hours of the run with its "
        "failures (gpu_hours / goodput)",
    )
    effective_cost_usd: float | None = Field(
        None, description="with reliability and total_tokens: effective_gpu_hours × the price"
    )
    reliability: dict[str, Any] | None = Field(
        None,
        description="with reliability: job_mtbf_hours, checkpoint_interval_s (and whether auto "
        "chose it), young_interval_s, checkpoint_write_s, checkpoint_GB, restart_s, completes, "
        "wall_fraction {useful, checkpoint, lost_work, restart} (sums to 1); with total_tokens "
        "also run_days, interruptions, lost_work_per_interruption_s",
    )
    placement: dict[str, str] | None = Field(
        None,
        description="where each parallel group of degree > 1 (tp, cp, dp, pp, ep, etp, edp) "
        "lands, its worst-placed group: intra-node, intra-domain (one NVLink domain over "
        "several nodes), crosses domains, crosses leaves, crosses pods (cluster.fabric)",
    )

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
