"""Per-phase MFU and MBU of a post-training step."""

from __future__ import annotations

import pytest

from moesim.scenario_io import scenario_from_dict
from moesim.sim.rl_phases import Phase, empty_parts, pass_work_per_gpu
from moesim.sim.rl_utilization import phase_utilization
from moesim.sim.run import simulate

GRPO = {"stage": "grpo", "global_batch": 8, "group_size": 4, "prompt_len": 256, "response_len": 256}


def scenario(**workload):
    return scenario_from_dict(
        {
            "name": "grpo",
            "model": "llama-3-8b",
            "cluster": {"gpu": "h100-sxm", "nodes": 1},
            "parallel": {"tp": 1, "pp": 1, "zero_stage": 1},
            "workload": {**GRPO, **workload},
        }
    )


def test_utilization_is_work_over_time_and_peak():
    s = scenario()
    ph = Phase("x", 2.0, empty_parts(), flops_per_gpu=989.4e12, hbm_bytes_per_gpu=3.35e12)
    # H100 SXM: 989.4 dense bf16 TFLOPS, 3.35 TB/s of HBM3 (the catalog's datasheet figures)
    u = phase_utilization(s, [ph, Phase("idle", 0.0, empty_parts())])
    assert u == {"x": {"mfu": pytest.approx(0.5), "mbu": pytest.approx(0.5)}}


def test_each_phase_reports_its_own_mfu_and_mbu():
    s = scenario(kl_coef=0.04, ppo_epochs=2)
    r = simulate(s)
    u = r.phase_utilization
    assert set(u) == {"weight_sync", "rollout", "old_logprobs", "reference", "training"}
    assert all(0 <= v["mfu"] < 1 and 0 <= v["mbu"] < 1 for v in u.values())
    # decode reads weights and KV for few tokens: memory-bound; training is compute-bound
    assert u["rollout"]["mbu"] > 3 * u["training"]["mbu"]
    assert u["training"]["mfu"] > 5 * u["rollout"]["mfu"]
    assert u["weight_sync"]["mfu"] == 0 and u["weight_sync"]["mbu"] > 0.3  # a memory-bound copy
    # the training phase's MFU is its FLOPs over its own time: ≥ the step's, which spreads them
    flops, _ = pass_work_per_gpu(s, train=True, lora=None)
    want = 2 * flops / (r.time_breakdown_s["training"] * 989.4e12)
    assert u["training"]["mfu"] == pytest.approx(want)
    assert u["training"]["mfu"] > r.mfu


def test_off_policy_rollout_is_measured_over_its_whole_generation():
    s = scenario(rollout="disaggregated", rollout_gpus=8, off_policy_steps=1)
    sync = simulate(scenario(rollout="disaggregated", rollout_gpus=8))
    off = simulate(s)
    assert off.phase_utilization["rollout"] == pytest.approx(sync.phase_utilization["rollout"])
