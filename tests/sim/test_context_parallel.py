"""Context parallelism: the cp ring's membership and ring attention's K/V exchange in a step."""

from __future__ import annotations

import itertools

import pytest
from sim_scenarios import SMALL_MOE, build

from moesim.catalog import load_gpu
from moesim.sim.grid import Grid
from moesim.sim.run import build_context, simulate
from moesim.sim.spans import exposed_length_s
from moesim.sim.training_step import pipeline_pass
from moesim.specs import Scenario

SEQ = 32768
H100 = load_gpu("h100-sxm")  # NVLink 450 GB/s per direction, 3 us; 8 × 400 Gb/s NICs


def _scenario(
    model: str, cp: int, tp: int = 1, nodes: int = 1, seq: int = SEQ, **sections
) -> Scenario:
    """``model`` on ``nodes`` 8-GPU H100 nodes, pp 1, dp the rest; Mixtral's 8 experts on ep 8."""
    ep = 8 if model.startswith("mixtral") else 1
    base = {
        "model": model,
        "cluster": {"gpu": "h100-sxm", "nodes": nodes, "gpus_per_node": 8},
        "parallel": {"tp": tp, "cp": cp, "pp": 1, "ep": ep},
        "workload": {"stage": "pretrain", "seq_len": seq, "global_batch": 8 * nodes},
    }
    for key, update in sections.items():
        base[key] = {**base.get(key, {}), **update}
    return build(SMALL_MOE, **base)


def _cp_spans(s: Scenario) -> tuple[float, float]:
    """(exposed, total) seconds of rank 0's cp exchange (exposed: not hidden by compute)."""
    ctx = build_context(s)
    pipeline_pass(ctx)
    ctx.env.run()
    ivs = ctx.ranks[0].intervals
    cp = [(a, b) for _, _, cat, a, b in ivs if cat == "cp_comm"]
    compute = [(a, b) for st, _, _, a, b in ivs if st == "compute"]
    return exposed_length_s(cp, compute), sum(b - a for a, b in cp)


def test_cp_group_holds_the_cp_ranks_of_one_sequence():
    grid = Grid(tp=2, cp=4, dp=2, pp=2, ep=1, etp=1)
    # g = tp_r + 2·(cp_r + 4·(dp_r + 2·pp_r)): g 19 is tp 1, cp 1, dp 0 of stage 1
    assert grid.cp_group(19) == (17, 19, 21, 23)
    groups = {grid.cp_group(g) for g in range(grid.pp * grid.stage_size)}
    assert sorted(itertools.chain(*groups)) == list(range(32))  # a partition of the ranks
    for g in range(32):
        group = grid.cp_group(g)
        assert g in group and len(group) == 4
        assert set(group) & set(grid.tp_group(g)) == {g}
        assert set(group) <= set(grid.dp_group(g))  # cp is folded into the gradient group
        assert {grid.coords(x)[0] for x in group} == {grid.coords(g)[0]}
    assert Grid(tp=8, cp=1, dp=2, pp=1, ep=1, etp=1).cp_group(9) == (9,)


def test_no_context_parallelism_no_cp_comm(small_moe):
    r = simulate(small_moe)
    assert r.time_breakdown_s["cp_comm"] == 0.0
    assert _cp_spans(small_moe) == (0.0, 0)


@pytest.mark.parametrize("model", ["llama-3-8b", "mixtral-8x7b"])
@pytest.mark.parametrize("cp", [2, 4])
def test_cp_comm_is_the_ring_traffic_over_nvlink(model, cp):
    # gradients reduced after the backward, so nothing else shares NVLink with the ring
    s = _scenario(model, cp, simulation={"overlap_dp": False})
    r = simulate(s)
    cm = build_context(s).cm  # the profile's achieved link fraction and per-collective overhead
    bw_Bps = H100.intra_node.bandwidth_GBps * 1e9 * cm.link_fraction("nvlink")
    latency_s = H100.intra_node.latency_us * 1e-6
    # both models: 8 KV heads of 128, bf16; a rank holds SEQ/cp tokens of K and V
    chunk_b = SEQ / cp * 2 * 8 * 128 * 2
    # a ring all-gather (or reduce-scatter) on one node: cp−1 steps of one chunk per link
    ring_s = (cp - 1) * (latency_s + chunk_b / bw_Bps) + cm.collective_overhead_s
    # per layer and microbatch: forward all-gather; backward all-gather of K/V and
    # reduce-scatter of dK/dV (selective recomputation keeps K/V: no ring of its own)
    expected_s = 3 * ring_s * s.model.n_layers * r.microbatches
    assert r.time_breakdown_s["cp_comm"] == pytest.approx(expected_s, rel=0.02)


def test_overlap_hides_the_ring_behind_the_attention():
    s = _scenario("llama-3-8b", 4)
    exposed, total = _cp_spans(s)
    assert total > 0 and exposed < total
    serial = _scenario("llama-3-8b", 4, simulation={"overlap_cp": False})
    exposed_serial, total_serial = _cp_spans(serial)
    assert exposed_serial == pytest.approx(total_serial)  # nothing computes during it
    assert total_serial == pytest.approx(total)
    assert simulate(serial).step_time_s > simulate(s).step_time_s


@pytest.mark.parametrize("model", ["llama-3-8b", "mixtral-8x7b"])
def test_a_slower_network_is_never_faster_when_the_ring_spans_nodes(model):
    def on(nic_Gbps: float):
        s = _scenario(model, cp=4, tp=4, nodes=2, cluster={"inter_node": {"nic_Gbps": nic_Gbps}})
        return s, simulate(s)

    s, _ = on(400)
    ctx = build_context(s)
    assert ctx.timer.spans_nodes(ctx.grid.cp_group(0))  # tp 4 · cp 4 > 8 GPUs of a node
    runs = [on(g)[1] for g in (50, 100, 200, 400, 800)]
    for slow, fast in itertools.pairwise(runs):
        assert fast.step_time_s <= slow.step_time_s * (1 + 1e-12)
        assert fast.time_breakdown_s["cp_comm"] < slow.time_breakdown_s["cp_comm"]


@pytest.mark.parametrize("model", ["llama-3-8b", "mixtral-8x7b"])
def test_full_and_symmetric_fidelity_agree_with_cp(model):
    s = _scenario(model, cp=2, tp=2, seq=8192)
    sym, full = simulate(s, fidelity="symmetric"), simulate(s, fidelity="full")
    assert full.simulated_ranks == 8 and sym.simulated_ranks == 1
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=0.02)
    assert full.time_breakdown_s["cp_comm"] > 0
