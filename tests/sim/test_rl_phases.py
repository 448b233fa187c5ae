"""Phases of an RL step other than the rollout: the colocated engines' host copies (vLLM sleep
levels, optimizer offload) and the work a pass does (its FLOPs and weight reads)."""

from __future__ import annotations

import pytest

from moesim.analytic.flops import token_flops
from moesim.analytic.post_training import post_training_memory
from moesim.analytic.rollout_memory import inference_weight_bytes, shard_params
from moesim.scenario_io import scenario_from_dict
from moesim.sim.rl_phases import memory_move_phases, pass_work_per_gpu, pcie_Bps
from moesim.sim.run import build_context, simulate

GRPO = {"stage": "grpo", "global_batch": 8, "group_size": 4, "prompt_len": 256, "response_len": 256}


def scenario(parallel=None, **workload):
    return scenario_from_dict(
        {
            "name": "grpo",
            "model": "llama-3-8b",
            "cluster": {"gpu": "h100-sxm", "nodes": 1},
            "parallel": parallel or {"tp": 1, "pp": 1, "zero_stage": 1},
            "workload": {**GRPO, **workload},
        }
    )


def moves(**workload) -> dict[str, float]:
    s = scenario(**workload)
    return {k: ph.time_s for k, ph in memory_move_phases(s, build_context(s)).items()}


def test_engine_stays_resident_by_default_and_moves_nothing():
    assert moves() == {}
    r = simulate(scenario())
    assert not {"engine_wake", "engine_sleep", "optimizer_offload"} & set(r.time_breakdown_s)


def test_sleep_level_one_copies_the_engine_weights_both_ways_over_pcie():
    s = scenario(sleep_level=1)
    bps = pcie_Bps(s, build_context(s))
    assert bps <= 64e9  # H100 SXM: PCIe Gen5 x16, 64 GB/s per direction, at most
    want = inference_weight_bytes(s) / bps  # 16 GB of bf16 Llama-3-8B at tp 1
    assert inference_weight_bytes(s) == pytest.approx(2 * 8.03e9, rel=0.01)
    assert moves(sleep_level=1) == pytest.approx({"engine_wake": want, "engine_sleep": want})


def test_sleep_level_two_discards_the_weights_so_nothing_crosses_pcie():
    assert moves(sleep_level=2) == {"engine_wake": 0.0, "engine_sleep": 0.0}
    one, two = simulate(scenario(sleep_level=1)), simulate(scenario(sleep_level=2))
    assert one.step_time_s > two.step_time_s
    assert one.host_copy_GB_per_gpu["engine_wake"] == pytest.approx(16.06, rel=0.01)


def test_optimizer_offload_moves_the_optimizer_states_out_and_back():
    s = scenario(offload_optimizer=True)
    nbytes = post_training_memory(s).offloaded_optimizer
    # ZeRO-1 over 8 GPUs: 12 bytes (fp32 master, two moments) per parameter / 8
    assert nbytes == pytest.approx(12 * 8.03e9 / 8, rel=0.01)
    got = moves(offload_optimizer=True)
    bps = pcie_Bps(s, build_context(s))
    t = nbytes / bps
    assert got == pytest.approx({"optimizer_offload": t, "optimizer_reload": t})
    r = simulate(s)
    order = [
        k
        for k in r.time_breakdown_s
        if k in ("optimizer_offload", "weight_sync", "rollout", "optimizer_reload", "training")
    ]
    assert order == ["optimizer_offload", "weight_sync", "rollout", "optimizer_reload", "training"]
    assert r.step_time_s == pytest.approx(simulate(scenario()).step_time_s + 2 * nbytes / bps)


@pytest.mark.parametrize("key", [{"sleep_level": 1}, {"offload_optimizer": True}])
def test_host_copies_of_a_disaggregated_rollout_are_refused(key):
    with pytest.raises(ValueError, match="colocated") as e:
        scenario(rollout="disaggregated", **key)
    assert next(iter(key)) in str(e.value)


def test_a_pass_does_the_mfu_convention_flops_and_reads_its_weight_shard_per_microbatch():
    s = scenario(parallel={"tp": 2, "pp": 1, "zero_stage": 1, "microbatch_size": 1})
    fl = token_flops(s.model, 512)
    tokens = 8 * 4 * 512  # prompts × group × (256 + 256)
    fwd_flops, fwd_bytes = pass_work_per_gpu(s, train=False, lora=None)
    train_flops, train_bytes = pass_work_per_gpu(s, train=True, lora=None)
    assert fwd_flops == pytest.approx(tokens * fl.forward / 8)
    assert train_flops == pytest.approx(3 * fwd_flops)
    microbatches = 8 * 4 // 4  # 32 sequences over dp 4, one per microbatch
    assert fwd_bytes == pytest.approx(microbatches * sum(shard_params(s, s.parallel)) * 2)
    assert train_bytes == pytest.approx(2 * fwd_bytes)
