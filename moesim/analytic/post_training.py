"""Memory per GPU of post-training: the model copies each stage holds and the rollout KV cache.

- SFT: the policy alone (pretraining's accounting), LoRA when given.
- DPO: the policy and a frozen reference (``reference: live``): weights only, no gradients or
  optimizer states, sharded like the policy's weights (ZeRO-3 shards it too). ``precomputed``
  reference log-probs, or LoRA (the reference is the base with the adapters off), hold none.
- GRPO: policy + reference (none when ``kl_coef`` is 0 or with LoRA) + a frozen reward model
  (``reward: model``); ``rule`` rewards run on the CPU.
- PPO: the seeds' four models: policy (trains), reference and reward model (frozen), critic
  (trains: weights, gradients and optimizer states of its own).
- Rollouts (GRPO/PPO) generate with a KV cache. ``colocated``: the inference engine (vLLM in
  TRL's ``vllm_mode: colocate`` and in veRL) lives beside the training states on the same GPUs
  with its own copy of the policy weights (``rollout_engine``, in ``weights_inference``
  precision, tp/pp/ep-sharded) and a KV pool that gets what the rollout needs, at most what the
  HBM has left; fewer sequences fit → more decode waves (the simulator counts them). Offloading
  the training states during rollout (veRL's sleep mode) is not modelled.
  ``disaggregated``: the rollout GPUs hold inference weights and the KV pool, the training GPUs
  none of it.

Frozen copies are stored in ``precision.params`` (bf16), sharded like the policy's weights; they
are added on the policy's worst pipeline stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from moesim.analytic.layout import StageLayout, pipeline_layout
from moesim.analytic.lora import lora_counts
from moesim.analytic.memory import (
    FRAMEWORK_RESERVE_BYTES,
    MemoryEstimate,
    kv_cache_bytes_per_token,
    memory_per_gpu,
    model_state_bytes,
    stage_params,
)
from moesim.analytic.params import count_params
from moesim.specs import (
    BYTES_PER_ELEMENT,
    DPOWorkload,
    GRPOWorkload,
    ModelSpec,
    PPOWorkload,
    Scenario,
    SFTWorkload,
)

POST_TRAINING_STAGES = ("sft", "dpo", "grpo", "ppo")


@dataclass(frozen=True)
class ModelCopy:
    """Bytes one GPU holds for one model of the stage."""

    role: str  # policy | reference | reward | critic
    weights: float
    gradients: float = 0.0
    optimizer: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer


@dataclass(frozen=True)
class PostTrainingMemory:
    estimate: MemoryEstimate  # the worst stage, every copy and the KV pool included
    copies: list[ModelCopy]  # on that stage
    rollout_sequences: int = 0  # sequences each rollout replica generates per step
    rollout_slots: int = 0  # of which the KV pool holds at once
    rollout_kv_per_sequence: float = 0.0  # bytes per GPU

    def copies_GB(self) -> dict[str, float]:
        return {c.role: c.total / 1e9 for c in self.copies}


def reward_model_of(s: Scenario) -> ModelSpec | None:
    w = s.workload
    if isinstance(w, PPOWorkload):
        return w.reward_model or s.model
    if isinstance(w, GRPOWorkload) and w.reward == "model":
        return w.reward_model
    return None


def critic_model_of(s: Scenario) -> ModelSpec | None:
    w = s.workload
    return (w.critic_model or s.model) if isinstance(w, PPOWorkload) else None


def has_reference(s: Scenario) -> bool:
    """Whether a separate frozen reference copy is held (not with LoRA: adapters off)."""
    w = s.workload
    if getattr(w, "lora", None) is not None:
        return False
    if isinstance(w, DPOWorkload):
        return w.reference == "live"
    if isinstance(w, GRPOWorkload):
        return w.kl_coef > 0
    return isinstance(w, PPOWorkload)


def needs_reference_pass(s: Scenario) -> bool:
    """Whether the step runs a reference forward (with LoRA: the base, adapters off)."""
    w = s.workload
    if isinstance(w, DPOWorkload):
        return w.reference == "live"
    if isinstance(w, GRPOWorkload):
        return w.kl_coef > 0
    return isinstance(w, PPOWorkload)


def _stage_of(model: ModelSpec, s: Scenario, rank: int) -> StageLayout:
    return pipeline_layout(model, s.parallel.pp, s.parallel.virtual_stages)[rank]


def _frozen(role: str, model: ModelSpec, s: Scenario, rank: int) -> ModelCopy:
    params = stage_params(model, s.parallel, _stage_of(model, s, rank))
    weights, _, _ = model_state_bytes(params, s.parallel, s.precision, trainable=False)
    return ModelCopy(role, weights)


def _trained(role: str, model: ModelSpec, s: Scenario, rank: int) -> ModelCopy:
    params = stage_params(model, s.parallel, _stage_of(model, s, rank))
    return ModelCopy(role, *model_state_bytes(params, s.parallel, s.precision))


def lora_policy(s: Scenario, stage: StageLayout) -> ModelCopy:
    """Frozen base weights plus adapters with their gradients and Adam states (ZeRO applies)."""
    m, p, prec = s.model, s.parallel, s.precision
    lora = s.workload.lora
    base = _frozen("policy", m, s, stage.rank)
    n_enc = m.n_encoder_layers
    layers = [lora_counts(m, lora).layers[i - n_enc] for i in stage.layers if i >= n_enc]
    dense = sum(x.non_expert for x in layers) / p.tp
    expert = sum(x.expert for x in layers) / (p.ep * p.etp)
    dp_group, edp = p.dp_size * p.cp, p.edp
    z = p.zero_stage
    adapters = dense + expert
    sharded = dense / dp_group + expert / edp
    weights = (sharded if z >= 3 else adapters) * prec.param_bytes
    grads = (sharded if z >= 2 else adapters) * prec.grad_bytes
    optim = (sharded if z >= 1 else adapters) * prec.optimizer_bytes_per_param
    return ModelCopy("policy", base.weights + weights, grads, optim)


def rollout_sequences(s: Scenario) -> int:
    """Sequences generated per step (GRPO: prompts × group) on each attention replica."""
    w = s.workload
    n = w.global_batch * (w.group_size if isinstance(w, GRPOWorkload) else 1)
    return math.ceil(n / (s.parallel.dp_size * s.parallel.cp))


def post_training_memory(s: Scenario) -> PostTrainingMemory:
    """The policy's training memory (``memory.memory_per_gpu``, its worst stage) plus, on that
    stage, the other models' copies and the colocated rollout's KV pool; LoRA replaces the
    policy's states by frozen weights and the adapters' states."""
    m, p, w = s.model, s.parallel, s.workload
    base = memory_per_gpu(s)
    stage = pipeline_layout(m, p.pp, p.virtual_stages)[base.stage]
    lora = getattr(w, "lora", None)
    if lora is not None:
        policy = lora_policy(s, stage)
    else:
        policy = ModelCopy("policy", base.weights, base.gradients, base.optimizer)
    copies = [policy]
    if has_reference(s):
        copies.append(_frozen("reference", m, s, stage.rank))
    rm = reward_model_of(s)
    if rm is not None:
        copies.append(_frozen("reward", rm, s, stage.rank))
    critic = critic_model_of(s)
    if critic is not None:
        copies.append(_trained("critic", critic, s, stage.rank))
    if isinstance(w, GRPOWorkload | PPOWorkload) and w.rollout == "colocated":
        copies.append(ModelCopy("rollout_engine", inference_weight_bytes(s)))
    est = replace(
        base,
        weights=sum(c.weights for c in copies),
        gradients=sum(c.gradients for c in copies),
        optimizer=sum(c.optimizer for c in copies),
    )
    if not isinstance(w, GRPOWorkload | PPOWorkload):
        return PostTrainingMemory(est, copies)
    kv_seq = kv_cache_bytes_per_token(m, p, s.precision) * w.seq_len
    n_roll = rollout_sequences(s)
    if w.rollout != "colocated":
        return PostTrainingMemory(est, copies, n_roll, 0, kv_seq)
    fit = int(max(s.cluster.gpu.hbm_GB * 1e9 - est.total, 0.0) // kv_seq)
    slots = max(1, min(n_roll, fit))
    return PostTrainingMemory(replace(est, kv_cache=slots * kv_seq), copies, n_roll, slots, kv_seq)


def inference_weight_bytes(s: Scenario) -> float:
    """The rollout engine's weights on one GPU: the policy under the training layout's tp, pp
    and ep·etp (never ZeRO-sharded: the engine needs whole shards), in
    ``precision.weights_inference``."""
    p = s.parallel
    counts = count_params(s.model)
    routed = sum(x.routed_experts for x in counts.decoder_layers)
    params = ((counts.total - routed) / p.tp + routed / (p.ep * p.etp)) / p.pp
    return params * BYTES_PER_ELEMENT[s.precision.weights_inference]


def rollout_gpu_memory(s: Scenario) -> tuple[MemoryEstimate, int]:
    """Disaggregated rollout GPUs (the training layout's tp/pp/ep, dp = the rest): inference
    weights and the KV pool for as many sequences as fit. Returns (memory, slots)."""
    m, p, w = s.model, s.parallel, s.workload
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    weights = inference_weight_bytes(s)
    kv_seq = kv_cache_bytes_per_token(m, p, s.precision) * w.seq_len
    free = s.cluster.gpu.hbm_GB * 1e9 - weights - FRAMEWORK_RESERVE_BYTES
    replicas = (w.rollout_gpus or s.gpus) // (p.tp * p.pp)
    need = math.ceil(
        w.global_batch * (w.group_size if isinstance(w, GRPOWorkload) else 1) / max(replicas, 1)
    )
    slots = max(1, min(need, int(max(free, 0.0) // kv_seq)))
    est = MemoryEstimate(weights, 0.0, 0.0, 0.0, slots * kv_seq, FRAMEWORK_RESERVE_BYTES)
    return est, slots


def is_post_training(s: Scenario) -> bool:
    return isinstance(s.workload, SFTWorkload | DPOWorkload | GRPOWorkload | PPOWorkload)
