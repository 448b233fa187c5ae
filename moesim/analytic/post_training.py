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
  HBM has left; fewer sequences fit → more decode waves (the simulator counts them).
  ``sleep_level`` 0 (the default): vLLM allocates its KV pool once and keeps it and its weights
  through training, so the pool gets what is left beside training's peak (activations
  included). ``sleep_level`` 1 or 2 (vLLM sleep mode: weights to host memory or discarded, KV
  discarded): the engine holds nothing during training, and the pool gets what is left beside
  what is resident during the rollout (no activations; no optimizer states with
  ``offload_optimizer``, which moves them to host memory for the rollout). The reported memory
  is then the larger of the two phases' (``phase_totals``).
  ``disaggregated``: the rollout GPUs hold inference weights and the KV pool, the training GPUs
  none of it.
- The rollout layout (``rollout_layout``): ``workload.rollout_parallel``'s tp/pp/ep/etp, the
  training layout's where left out, dp = rollout GPUs / (tp·pp), cp 1 (decode does not split a
  sequence: training's cp GPUs become more replicas), no ZeRO (an engine needs whole shards).
- A memory that does not fit is reported, never rounded up: ``rollout_kv_capacity`` is the
  sequences whose KV cache fits (0 when none does); the simulator still times one per replica
  and the result says it does not fit.
- The rollout engine (``workload.rollout_engine``, vLLM's knobs;
  ``moesim.analytic.rollout_memory``): its KV pool is what is left of the engine's usable HBM
  (``rollout_kv_pool_bytes``): HBM beside everything resident during the rollout (above), and at
  most ``gpu_memory_utilization`` × HBM minus the engine's weights and the reserve when that is
  given (vLLM sizes its pool inside that fraction, vllm/v1/worker/gpu_worker.py
  ``determine_available_memory``; the activations of its profiled step, which vLLM also takes
  out, are not modelled here). ``vllm_v1`` pages the pool (``rollout_kv_pool_tokens``) and runs
  up to ``max_num_seqs`` sequences, preempting when it runs out; ``prefill_first`` runs as many
  as fit whole (at most ``max_num_seqs``). The memory reports the KV of the sequences the pool
  holds at once (at least one, at most ``max_num_seqs``), at the mean length.

Frozen copies are stored in ``precision.params`` (bf16), sharded like the policy's weights; they
are added on the policy's worst pipeline stage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from moesim.analytic.layout import StageLayout, pipeline_layout, stage_layouts
from moesim.analytic.lora import lora_counts
from moesim.analytic.memory import (
    MemoryEstimate,
    memory_per_gpu,
    model_state_bytes,
    stage_params,
)
from moesim.analytic.rollout_memory import (
    inference_weight_bytes,
    rollout_kv_per_sequence,
    rollout_layout,
    rollout_pool,
    rollout_sequences,
    shard_params,
)
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
    rollout_slots: int = 0  # the engine's max_num_seqs (prefill_first: what fits, at least 1)
    rollout_kv_per_sequence: float = 0.0  # bytes per GPU
    rollout_kv_capacity: int = 0  # sequences whose KV cache fits (0: not even one)
    phase_totals: dict[str, float] | None = None  # bytes per GPU in training and in rollout
    offloaded_optimizer: float = 0.0  # optimizer bytes per GPU sent to host for the rollout
    rollout_kv_pool_tokens: int = 0  # tokens whose KV the rollout engine's pool holds

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
    """The policy's layout; another model (reward, critic) is split evenly, as the layout
    options name the policy's layers."""
    if model is s.model:
        return stage_layouts(model, s.parallel)[rank]
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


def post_training_memory(s: Scenario) -> PostTrainingMemory:
    """The policy's training memory (``memory.memory_per_gpu``, its worst stage) plus, on that
    stage, the other models' copies and the colocated rollout's KV pool; LoRA replaces the
    policy's states by frozen weights and the adapters' states."""
    m, p, w = s.model, s.parallel, s.workload
    base = memory_per_gpu(s)
    stage = stage_layouts(m, p)[base.stage]
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
    kv_seq = rollout_kv_per_sequence(s)
    n_roll = rollout_sequences(s)
    if w.rollout != "colocated":
        return PostTrainingMemory(est, copies, n_roll, 0, kv_seq)
    hbm = s.cluster.gpu.hbm_GB * 1e9
    if w.sleep_level == 0:  # the pool lives beside training's peak
        # timed with one sequence when none fits; fits_in_memory says no
        slots, capacity, tokens, held = rollout_pool(s, hbm - est.total, n_roll)
        offloaded = sum(c.optimizer for c in copies) if w.offload_optimizer else 0.0
        est = replace(est, kv_cache=held)
        return PostTrainingMemory(
            est, copies, n_roll, slots, kv_seq, capacity, None, offloaded, tokens
        )
    # sleep mode: the engine is resident only for the rollout, training states without their
    # activations (and without optimizer states when offloaded) only beside it
    engine = next(c.weights for c in copies if c.role == "rollout_engine")
    offloaded = sum(c.optimizer for c in copies) if w.offload_optimizer else 0.0
    at_rollout = replace(est, activations=0.0, optimizer=est.optimizer - offloaded)
    slots, capacity, tokens, held = rollout_pool(s, hbm - at_rollout.total, n_roll)
    at_rollout = replace(at_rollout, kv_cache=held)
    at_training = replace(est, weights=est.weights - engine)
    peak = at_rollout if at_rollout.total > at_training.total else at_training
    totals = {"training": at_training.total, "rollout": at_rollout.total}
    return PostTrainingMemory(
        peak, copies, n_roll, slots, kv_seq, capacity, totals, offloaded, tokens
    )


@dataclass(frozen=True)
class WeightSyncBytes:
    """What one weight sync moves per GPU (parameters and bytes), from the training shards to
    the rollout engine's (HybridFlow's 3D-HybridEngine, Sheng et al. 2024, §5: a GPU keeps
    what it already holds of its new shard and gathers the rest)."""

    train_params: float  # parameters a training GPU holds (tp/pp/ep shard, before ZeRO)
    rollout_params: float  # parameters a rollout GPU holds (rollout layout)
    moved_bytes: float  # bytes each rollout GPU receives over a link, in weights_inference
    within_node: bool  # colocated: whether what moves stays inside a node (NVLink)


def weight_sync_bytes(s: Scenario) -> WeightSyncBytes:
    """Bytes each rollout GPU receives at a weight sync.

    Disaggregated: its whole rollout shard, over the network. Colocated: the part of its rollout
    shard it does not hold already. Along each split (tp for the dense part, ep·etp for the
    routed experts, pp for the layers) a GPU holding 1/a of a tensor and needing 1/b keeps at
    best min(1, b/a) of what it needs (rollout ranks mapped onto the training shards, as
    HybridFlow does), so only a rollout layout coarser than training's (smaller tp, ep·etp or
    pp) moves anything. The sources sit inside a node when the training groups they come from do.
    """
    w, p = s.workload, s.parallel
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    r = rollout_layout(s)
    wb = BYTES_PER_ELEMENT[s.precision.weights_inference]
    dense_t, expert_t = shard_params(s, p)
    dense_r, expert_r = shard_params(s, r)
    if w.rollout == "disaggregated":
        return WeightSyncBytes(
            dense_t + expert_t, dense_r + expert_r, (dense_r + expert_r) * wb, False
        )
    keep_tp = min(1.0, r.tp / p.tp)
    keep_ex = min(1.0, (r.ep * r.etp) / (p.ep * p.etp))
    keep_pp = min(1.0, r.pp / p.pp)
    moved = dense_r * (1 - keep_tp * keep_pp) + expert_r * (1 - keep_ex * keep_pp)
    gpn = s.cluster.domain_gpus  # NVLink reaches the whole domain
    within = s.gpus <= gpn or (
        keep_pp == 1.0
        and (keep_tp == 1.0 or p.tp <= gpn)
        and (keep_ex == 1.0 or p.ep * p.etp <= gpn)
    )
    return WeightSyncBytes(dense_t + expert_t, dense_r + expert_r, moved * wb, within)


def is_post_training(s: Scenario) -> bool:
    return isinstance(s.workload, SFTWorkload | DPOWorkload | GRPOWorkload | PPOWorkload)
