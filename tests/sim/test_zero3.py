"""ZeRO-3: per-layer parameter gathers before the forward and the backward, prefetched one
layer ahead; 3Ψ of data-parallel traffic against ZeRO-1/2's 2Ψ."""

from __future__ import annotations

import pytest
from sim_scenarios import SMALL_MOE, build

from moesim.sim.run import build_context, simulate
from moesim.sim.spans import exposed_length_s, union_length_s
from moesim.sim.training_step import pipeline_pass


def _dense(
    zero: int, nic_Gbps: float, microbatches: int = 1, model: str = "llama-3-8b", ep: int = 1
):
    """8 data-parallel ranks on two 4-GPU nodes (the DP ring crosses the network), pp 1."""
    return build(
        SMALL_MOE,
        model=model,
        cluster={
            "nodes": 2,
            "gpus_per_node": 4,
            "inter_node": {"nics_per_node": 4, "nic_Gbps": nic_Gbps, "latency_us": 5},
        },
        parallel={"tp": 1, "pp": 1, "ep": ep, "dp": 8, "zero_stage": zero},
        workload={"stage": "pretrain", "seq_len": 1024, "global_batch": 8 * microbatches},
    )


@pytest.mark.parametrize("other", [1, 2])
def test_zero3_moves_one_and_a_half_times_the_dp_bytes(other):
    # 1 Gbps NICs: the ring time is all bandwidth, so DP time is proportional to DP bytes
    base = simulate(_dense(other, 1.0)).time_breakdown_s["dp_comm"]
    z3 = simulate(_dense(3, 1.0)).time_breakdown_s["dp_comm"]
    assert z3 / base == pytest.approx(1.5, rel=0.005)  # 3Ψ / 2Ψ (Rajbhandari et al. §7)


def test_zero3_gathers_again_for_every_microbatch():
    # m microbatches: (2m + 1)Ψ against 2Ψ
    base = simulate(_dense(1, 1.0, 2)).time_breakdown_s["dp_comm"]
    z3 = simulate(_dense(3, 1.0, 2)).time_breakdown_s["dp_comm"]
    assert z3 / base == pytest.approx(2.5, rel=0.005)


def test_zero3_is_slower_on_a_slow_network():
    slow1, slow3 = simulate(_dense(1, 10.0)), simulate(_dense(3, 10.0))
    assert slow3.step_time_s > 1.3 * slow1.step_time_s
    tb = slow3.time_breakdown_s
    assert tb["compute"] + tb["exposed_comm"] + tb["bubble"] + tb["imbalance"] == pytest.approx(
        slow3.step_time_s
    )


def test_prefetch_hides_gathers_under_layer_compute():
    # one NVLink node and 8k-token sequences: a layer's compute outlasts its gather
    s = build(
        _dense(3, 400.0).model_dump(mode="json"),
        cluster={"nodes": 1, "gpus_per_node": 8},
        workload={"stage": "pretrain", "seq_len": 8192, "global_batch": 8},
    )
    ctx = build_context(s)
    pipeline_pass(ctx)
    ctx.env.run()
    (rank,) = ctx.ranks.values()
    gathers = [iv for iv in rank.intervals if iv[1].startswith("param_all_gather")]
    layers = ctx.scenario.model.n_layers
    assert len(gathers) == 2 * layers  # one before each layer's forward and backward
    compute = [(a, b) for st, _, _, a, b in rank.intervals if st == "compute"]
    spans = [(a, b) for *_, a, b in gathers]
    # only the first gather of each direction waits in full
    assert exposed_length_s(spans, compute) < 0.2 * union_length_s(spans)


@pytest.mark.parametrize(("ep", "expert_gathers"), [(4, True), (8, False)])
def test_expert_parameters_gather_over_expert_data_parallel(ep, expert_gathers):
    # Mixtral on 8 ranks: ep 4 leaves 2 expert-data-parallel replicas, ep 8 none to gather from
    ctx = build_context(_dense(3, 400.0, model="mixtral-8x7b", ep=ep))
    assert ctx.grid.edp == 8 // ep
    pipeline_pass(ctx)
    ctx.env.run()
    (rank,) = ctx.ranks.values()
    names = [iv[1] for iv in rank.intervals if iv[0] == "dp"]
    assert names.count("param_all_gather_dense") == 2 * ctx.scenario.model.n_layers
    assert ("param_all_gather_expert" in names) is expert_gathers
