"""The GRPO/PPO workload keys of issue 14: lengths as numbers or distributions, off-policy
steps, dynamic sampling, sleep mode and optimizer offload — and the errors a typo gets."""

from __future__ import annotations

import pytest

from moesim.scenario_io import scenario_from_dict


def workload(**kw):
    d = {
        "name": "w",
        "model": "llama-3-8b",
        "cluster": {"gpu": "h100-sxm", "nodes": 1},
        "parallel": {"tp": 1},
        "workload": {"stage": "grpo", "global_batch": 8, **kw},
    }
    return scenario_from_dict(d).workload


def test_defaults_are_synchronous_resident_and_keep_every_prompt():
    w = workload()
    assert (w.off_policy_steps, w.oversample_ratio, w.sleep_level, w.offload_optimizer) == (
        0, 1.0, 0, False)  # fmt: skip
    assert w.seq_len == 512 + 1024 == w.max_seq_tokens


def test_a_length_distribution_gives_mean_and_longest_sequences():
    w = workload(response_len={"distribution": "uniform", "min": 100, "max": 301},
                 prompt_len={"distribution": "empirical", "values": [10, 30]})  # fmt: skip
    assert w.response_tokens == 200.5 and w.prompt_tokens == 20
    assert w.seq_len == round(220.5)  # the packed mean a training step costs
    assert w.max_seq_tokens == 30 + 301


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"oversample_ratio": 0.9}, "oversample_ratio"),
        ({"sleep_level": 3}, "sleep_level"),
        ({"off_policy_steps": -1}, "off_policy_steps"),
        ({"rollout": "disaggregated", "sleep_level": 2}, "colocated"),
        ({"rollout": "disaggregated", "offload_optimizer": True}, "offload_optimizer"),
        ({"response_len": {"distribution": "lognormal", "mean": 100}}, "p99"),
    ],
)
def test_bad_rl_keys_are_named(kw, words):
    with pytest.raises(ValueError, match=words):
        workload(**kw)


def test_ppo_takes_the_same_keys():
    d = {
        "name": "w", "model": "llama-3-8b", "cluster": {"gpu": "h100-sxm", "nodes": 1},
        "parallel": {"tp": 1},
        "workload": {"stage": "ppo", "global_batch": 8, "off_policy_steps": 1,
                     "response_len": {"distribution": "fixed", "mean": 64}},
    }  # fmt: skip
    w = scenario_from_dict(d).workload
    assert w.off_policy_steps == 1 and w.response_tokens == 64


def test_rollout_engine_takes_serving_names_and_verl_defaults():
    from moesim.specs.engine import RolloutEngineSpec

    e = RolloutEngineSpec()
    # verl's rollout config (verl/trainer/config/rollout/rollout.yaml)
    assert (e.scheduler, e.max_batch_size, e.max_prefill_tokens) == ("vllm_v1", 1024, 8192)
    v = RolloutEngineSpec(max_num_seqs=64, max_num_batched_tokens=2048)
    assert (v.max_batch_size, v.max_prefill_tokens) == (64, 2048)
    with pytest.raises(ValueError, match=r"workload\.rollout_engine\.max_num_seqs"):
        RolloutEngineSpec(max_num_seqs=64, max_batch_size=32)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        RolloutEngineSpec(gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="scheduler"):
        RolloutEngineSpec(scheduler="sglang")
