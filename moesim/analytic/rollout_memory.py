"""The rollout engine of GRPO/PPO, in closed form: its layout (``rollout_layout``: the
rollout's tp/pp/ep/etp, dp from the rollout GPUs), the sequences it generates, its KV per token
and sequence, its paged pool (what is left of the engine's usable HBM, at most
``gpu_memory_utilization`` × HBM minus its weights and the reserve, as vLLM sizes it), its
slots, and the memory of a rollout GPU when the rollout is disaggregated.
``moesim.analytic.post_training`` adds it to the post-training estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moesim.analytic.memory import (
    MemoryEstimate,
    kv_cache_bytes_per_token,
    reserve_bytes,
)
from moesim.analytic.params import count_params
from moesim.specs import (
    BYTES_PER_ELEMENT,
    GRPOWorkload,
    ParallelSpec,
    PPOWorkload,
    Scenario,
)
from moesim.specs.base import SpecError
from moesim.specs.workload import RolloutParallelSpec


def rollout_gpu_count(s: Scenario) -> int:
    """GPUs that generate: the training GPUs (colocated) or ``rollout_gpus`` (disaggregated,
    default as many as training)."""
    w = s.workload
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    return s.gpus if w.rollout == "colocated" else (w.rollout_gpus or s.gpus)


def rollout_layout(s: Scenario) -> ParallelSpec:
    """The rollout engine's layout (see the module docstring). Raises a SpecError naming the
    rollout field when it cannot be built on the rollout GPUs."""
    w, p = s.workload, s.parallel
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    rp = w.rollout_parallel or RolloutParallelSpec()
    tp, pp = rp.tp or p.tp, rp.pp or p.pp
    ep, etp = rp.ep or p.ep, rp.etp or p.etp
    gpus, gpn = rollout_gpu_count(s), s.cluster.gpus_per_node
    where = "workload.rollout_parallel" if w.rollout_parallel else "workload.rollout_gpus"
    if gpus % (tp * pp):
        raise SpecError(
            where,
            f"the rollout's tp·pp = {tp}·{pp} must divide its {gpus} GPUs "
            "(tp and pp default to the training layout's; set workload.rollout_parallel)",
        )
    if w.rollout == "disaggregated" and gpus > gpn and gpus % gpn:
        raise SpecError(
            "workload.rollout_gpus",
            f"{gpus} rollout GPUs must be whole nodes of {gpn} (or fewer than a node)",
        )
    dp = gpus // (tp * pp)
    if (tp * dp) % (ep * etp):
        raise SpecError(
            where,
            f"the rollout's ep·etp = {ep}·{etp} must divide its tp·dp = {tp}·{dp} GPUs per "
            "pipeline stage (ep and etp default to the training layout's)",
        )
    return ParallelSpec(tp=tp, pp=pp, dp=dp, cp=1, ep=ep, etp=etp, zero_stage=0, recompute="none")


def generated_prompts(s: Scenario) -> int:
    """Prompts the rollout generates per step: ``global_batch`` × ``oversample_ratio`` (dynamic
    sampling generates more than it keeps), rounded up."""
    w = s.workload
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    return math.ceil(w.global_batch * w.oversample_ratio - 1e-9)


def rollout_sequences(s: Scenario) -> int:
    """Sequences generated per step (GRPO: prompts × group) on each rollout replica."""
    w = s.workload
    n = generated_prompts(s) * (w.group_size if isinstance(w, GRPOWorkload) else 1)
    return math.ceil(n / rollout_layout(s).dp_size)


def rollout_kv_per_sequence(s: Scenario) -> float:
    """KV-cache bytes one rollout sequence (prompt + response; the mean lengths when they are
    distributions: a paged pool holds what sequences hold) takes on one rollout GPU."""
    return kv_cache_bytes_per_token(s.model, rollout_layout(s), s.precision) * s.workload.seq_len


def rollout_kv_per_token(s: Scenario) -> float:
    """KV-cache bytes one token of a rollout sequence takes on one rollout GPU."""
    return kv_cache_bytes_per_token(s.model, rollout_layout(s), s.precision)


def rollout_kv_pool_bytes(s: Scenario, left_bytes: float) -> float:
    """The rollout engine's KV pool on one GPU: ``left_bytes`` (HBM beside everything resident
    during the rollout, the engine's weights included), and at most
    ``rollout_engine.gpu_memory_utilization`` × HBM minus the engine's weights and the reserve
    when that is given (at least 0)."""
    w = s.workload
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    share = w.rollout_engine.gpu_memory_utilization
    if share is not None:
        hbm = s.cluster.gpu.hbm_GB * 1e9
        budget = share * hbm - inference_weight_bytes(s) - reserve_bytes(s)
        left_bytes = min(left_bytes, budget)
    return max(left_bytes, 0.0)


def rollout_engine_slots(s: Scenario, sequences: int, capacity: int) -> int:
    """The sequences a rollout replica's engine runs at once (its max_num_seqs): vllm_v1 up to
    ``rollout_engine.max_num_seqs`` of its ``sequences`` (the paged pool preempts when short);
    prefill_first only as many as fit whole (``capacity``), at least one (what is timed)."""
    w = s.workload
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    limit = w.rollout_engine.max_batch_size
    if w.rollout_engine.scheduler == "prefill_first":
        return max(1, min(capacity, limit))
    return max(1, min(sequences, limit))


def rollout_pool(s: Scenario, left_bytes: float, n_roll: int) -> tuple[int, int, int, float]:
    """(slots, capacity in mean-length sequences, pool tokens, KV bytes held at once) of the
    rollout engine with ``left_bytes`` free beside what is resident."""
    pool = rollout_kv_pool_bytes(s, left_bytes)
    kv_seq = rollout_kv_per_sequence(s)
    capacity = min(n_roll, int(pool // kv_seq))
    slots = rollout_engine_slots(s, n_roll, capacity)
    held = max(1, min(capacity, s.workload.rollout_engine.max_batch_size)) * kv_seq
    return slots, capacity, int(pool // rollout_kv_per_token(s)), held


def shard_params(s: Scenario, p: ParallelSpec) -> tuple[float, float]:
    """(non-expert, routed-expert) parameters one GPU holds under layout ``p``: tp-, ep·etp- and
    pp-sharded, never ZeRO-sharded (the average over pipeline stages)."""
    counts = count_params(s.model)
    routed = sum(x.routed_experts for x in counts.decoder_layers)
    return (counts.total - routed) / p.tp / p.pp, routed / (p.ep * p.etp) / p.pp


def inference_weight_bytes(s: Scenario) -> float:
    """The rollout engine's weights on one GPU: the policy under the rollout layout, in
    ``precision.weights_inference``."""
    return (
        sum(shard_params(s, rollout_layout(s))) * BYTES_PER_ELEMENT[s.precision.weights_inference]
    )


@dataclass(frozen=True)
class RolloutMemory:
    """A disaggregated rollout GPU: its memory (the KV its concurrent sequences hold), the
    engine's max_num_seqs (``slots``), the sequences whose KV fits (``capacity``, 0 when none
    does), the pool's tokens and whether it all fits."""

    estimate: MemoryEstimate
    slots: int
    capacity: int
    fits: bool
    pool_tokens: int = 0


def rollout_gpu_memory(s: Scenario) -> RolloutMemory:
    """Disaggregated rollout GPUs: inference weights (rollout layout) and the KV pool of what
    is left (``rollout_kv_pool_bytes``); the memory holds the KV of the sequences the pool
    holds at once, at least one (what the simulator times)."""
    w = s.workload
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    weights = inference_weight_bytes(s)
    hbm = s.cluster.gpu.hbm_GB * 1e9
    reserve = reserve_bytes(s)
    slots, capacity, tokens, held = rollout_pool(s, hbm - weights - reserve, rollout_sequences(s))
    est = MemoryEstimate(weights, 0.0, 0.0, 0.0, held, reserve)
    return RolloutMemory(est, slots, capacity, capacity >= 1, tokens)  # capacity is what fits
