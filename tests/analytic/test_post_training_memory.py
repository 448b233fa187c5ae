"""Colocated rollout memory under vLLM sleep mode and optimizer offload: what each phase holds,
and the KV pool the rollout gets."""

from __future__ import annotations

import pytest

from moesim.analytic.post_training import post_training_memory
from moesim.analytic.rollout_memory import (
    generated_prompts,
    inference_weight_bytes,
    rollout_sequences,
)
from moesim.scenario_io import scenario_from_dict

# Llama-2-13B (MHA: 0.8 MB of KV per token) with Adam states on 8 GPUs: the KV pool is small
WL = {"stage": "grpo", "global_batch": 64, "group_size": 16, "prompt_len": 1024,
      "response_len": 1024}  # fmt: skip


def scenario(**workload):
    return scenario_from_dict(
        {
            "name": "grpo",
            "model": "llama-2-13b",
            "cluster": {"gpu": "h100-sxm", "nodes": 1},
            "parallel": {"tp": 2, "pp": 1, "zero_stage": 1},
            "workload": {**WL, **workload},
        }
    )


def test_resident_engine_pool_sits_beside_training_peak():
    m = post_training_memory(scenario())
    assert m.phase_totals is None
    hbm = scenario().cluster.gpu.hbm_GB * 1e9  # an H100's, as the driver reports it
    assert m.rollout_kv_capacity == int((hbm - (m.estimate.total - m.estimate.kv_cache))
                                        // m.rollout_kv_per_sequence)  # fmt: skip


def test_sleep_frees_the_engine_for_training_and_activations_for_the_rollout():
    awake, asleep = post_training_memory(scenario()), post_training_memory(scenario(sleep_level=1))
    assert asleep.rollout_kv_capacity > awake.rollout_kv_capacity
    training, rollout = asleep.phase_totals["training"], asleep.phase_totals["rollout"]
    engine = inference_weight_bytes(scenario())
    base = awake.estimate.total - awake.estimate.kv_cache  # training states + engine weights
    assert training == pytest.approx(base - engine)
    act = awake.estimate.activations
    kv = asleep.rollout_kv_capacity * asleep.rollout_kv_per_sequence  # what the pool holds
    assert rollout == pytest.approx(base - act + kv)
    assert asleep.estimate.total == pytest.approx(max(training, rollout))
    # levels 1 and 2 hold the same in HBM (they differ in what crosses PCIe)
    assert post_training_memory(scenario(sleep_level=2)).phase_totals == asleep.phase_totals


def test_offloaded_optimizer_states_grow_the_pool_only_when_the_engine_sleeps():
    awake = post_training_memory(scenario())
    awake_off = post_training_memory(scenario(offload_optimizer=True))
    assert awake_off.rollout_kv_capacity == awake.rollout_kv_capacity  # the pool never left
    asleep = post_training_memory(scenario(sleep_level=2))
    off = post_training_memory(scenario(sleep_level=2, offload_optimizer=True))
    assert off.offloaded_optimizer == pytest.approx(asleep.estimate.optimizer)
    gained = off.rollout_kv_capacity - asleep.rollout_kv_capacity
    per_seq = asleep.rollout_kv_per_sequence
    assert gained == pytest.approx(off.offloaded_optimizer / per_seq, abs=1)


def test_oversampling_generates_more_sequences_per_replica():
    s = scenario(oversample_ratio=1.5)
    assert generated_prompts(s) == 96
    assert rollout_sequences(s) == 96 * 16 // 4  # dp 4 rollout replicas (tp 2 on 8 GPUs)
    assert generated_prompts(scenario(oversample_ratio=1.01)) == 65  # rounded up


def test_rollout_kv_pool_is_what_the_resident_states_and_the_utilization_leave():
    """The pool grows as sleep mode and optimizer offload free HBM for the rollout; a
    gpu_memory_utilization caps it at that share of HBM minus the engine's weights and the
    reserve (vLLM sizes its pool inside the share), and never raises it."""
    from moesim.analytic.memory import reserve_bytes
    from moesim.analytic.rollout_memory import rollout_kv_per_token

    awake = post_training_memory(scenario())
    asleep = post_training_memory(scenario(sleep_level=2))
    off = post_training_memory(scenario(sleep_level=2, offload_optimizer=True))
    pools = [m.rollout_kv_pool_tokens for m in (awake, asleep, off)]
    assert pools == sorted(pools) and pools[0] < pools[-1]
    per_token = rollout_kv_per_token(scenario())
    hbm = scenario().cluster.gpu.hbm_GB * 1e9
    left = hbm - (awake.estimate.total - awake.estimate.kv_cache)
    assert awake.rollout_kv_pool_tokens == int(left // per_token)
    for share in (0.2, 0.4, 0.6, 0.9):
        s = scenario(sleep_level=2, offload_optimizer=True,
                     rollout_engine={"gpu_memory_utilization": share})  # fmt: skip
        capped = share * hbm - inference_weight_bytes(s) - reserve_bytes(s)
        tokens = post_training_memory(s).rollout_kv_pool_tokens
        assert tokens == min(off.rollout_kv_pool_tokens, max(0, int(capped // per_token)))
