"""The optimizer step: bytes per parameter and the ZeRO shard."""

from __future__ import annotations

import pytest
from sim_scenarios import SMALL_MOE, build

from moesim.sim.optimizer_step import multi_tensor_launches, optimizer_ops
from moesim.sim.run import simulate
from moesim.specs import Precision

DENSE_D = {**SMALL_MOE, "model": "llama-3-8b", "parallel": {"pp": 2, "ep": 1, "zero_stage": 0}}
DENSE = build(DENSE_D)  # dp 8


def _bytes(ops) -> dict[str, float]:
    return {op.name: op.bytes for op in ops}


def test_bytes_per_parameter_by_hand():
    ops = optimizer_ops(Precision(), DENSE.parallel, 1e6, 0.0, 10)
    assert _bytes(ops) == {
        "grad_to_fp32": 1e6 * (2 + 4),  # bf16 gradient read, fp32 main gradient written
        "grad_norm": 1e6 * 4,
        "adam": 1e6 * (2 * 4 + 4 + 2 * 8),  # master r/w, gradient, both fp32 moments r/w
        "param_copy": 1e6 * (4 + 2),  # master read, bf16 weight written
    }
    bf16_moments = optimizer_ops(Precision(optimizer_states="bf16"), DENSE.parallel, 1e6, 0, 10)
    assert _bytes(bf16_moments)["adam"] == 1e6 * (2 * 4 + 4 + 2 * 4)
    fp32_grads = optimizer_ops(Precision(grads="fp32"), DENSE.parallel, 1e6, 0, 10)
    assert "grad_to_fp32" not in _bytes(fp32_grads)


def test_zero1_with_dp8_moves_an_eighth_of_the_bytes():
    zero0 = optimizer_ops(Precision(), DENSE.parallel, 8e9, 0.0, 300)
    z1 = build(DENSE_D, parallel={"zero_stage": 1}).parallel
    assert z1.dp_size == 8
    zero1 = optimizer_ops(Precision(), z1, 8e9, 0.0, 300)
    for name, b in _bytes(zero1).items():
        assert b == pytest.approx(_bytes(zero0)[name] / 8)


def test_experts_shard_over_the_expert_data_parallel_group():
    s = build(SMALL_MOE, parallel={"ep": 4, "zero_stage": 1})  # dp 8, edp 2
    ops = optimizer_ops(Precision(), s.parallel, 0.0, 1e9, 10)
    assert _bytes(ops)["adam"] == pytest.approx(1e9 / s.parallel.edp * 28)


def test_multi_tensor_launches():
    assert multi_tensor_launches(1.0, 1, 4) == 1
    per_launch = 2048 * 32 * 320
    assert multi_tensor_launches(3 * per_launch + 1, 1, 1) == 4
    assert multi_tensor_launches(10.0, 37, 4) == 2  # 36 tensors per launch for four lists


def test_optimizer_time_falls_with_the_zero_shard():
    zero0 = simulate(DENSE).time_breakdown_s["optimizer"]
    zero1 = simulate(build(DENSE_D, parallel={"zero_stage": 1})).time_breakdown_s["optimizer"]
    assert zero1 < zero0 / 4
