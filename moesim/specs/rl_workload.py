"""The RL workloads (GRPO, PPO): a rollout engine generates, then the policy (and critic,
reference, reward models) train on it. Batch sizes count prompts per optimizer step.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from moesim.specs.base import NO_BOOL_INT, Float, NonNegativeInt, PositiveFloat, PositiveInt, Spec
from moesim.specs.engine import RolloutEngineSpec
from moesim.specs.lengths import Length, max_length, mean_length
from moesim.specs.model import ModelSpec
from moesim.specs.training_workload import LoRASpec

# Input limit: every response is a rollout the simulator times; GRPO with 128 prompts x 1,000
# responses took 50 s on this project's 2-core machine (issue 16).
MAX_GROUP_SIZE = 1024


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
