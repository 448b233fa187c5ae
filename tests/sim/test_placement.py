"""Where groups land (result ``placement``), which rank symmetric fidelity simulates, and the
properties that placement must obey in whole-step simulations."""

from __future__ import annotations

import itertools

import pytest
from sim_scenarios import build

from moesim.sim.grid import Grid
from moesim.sim.network import Topology
from moesim.sim.placement import placement, representative_q
from moesim.sim.run import simulate

GB = 1e9
# Mixtral on 4 nodes of 4 GPUs: pp 2, a stage = 2 nodes, one EP group of 8 across them
ACROSS_NODES = {"gpus_per_node": 4, "nodes": 4}


def _topo(nodes: int, gpn: int, domain: int) -> Topology:
    return Topology(nodes, gpn, 100 * GB, 10 * GB, gpn, 0.0, 0.0, domain_gpus=domain)


def test_placement_names_node_domain_and_boundary_crossings():
    grid = Grid(tp=2, cp=1, dp=8, pp=2, ep=8, etp=1)  # 32 GPUs, stage = 16
    assert placement(grid, _topo(4, 8, 8)) == {
        "tp": "intra-node",
        "dp": "crosses nodes",
        "pp": "crosses nodes",
        "ep": "intra-node",
        "edp": "crosses nodes",
    }
    on_domains = placement(grid, _topo(4, 8, 16))
    assert on_domains["dp"] == "intra-domain" and on_domains["pp"] == "crosses domains"


def test_a_straddling_group_is_reported_and_simulated():
    # 144 GPUs in two 72-GPU domains of 4-GPU nodes, EP 16: groups at 0, 16, 32, 48 fit the
    # first domain, the group at 64 spans 64..79 across the boundary at 72
    grid, topo = Grid(tp=1, cp=1, dp=144, pp=1, ep=16, etp=1), _topo(36, 4, 72)
    assert placement(grid, topo)["ep"] == "crosses domains"
    q = representative_q(grid, topo)
    assert 64 <= q < 80
    assert len({topo.domain_of(g) for g in grid.ep_group(grid.gpu(0, q))}) == 2


def test_default_clusters_simulate_the_first_rank():
    assert representative_q(Grid(tp=1, cp=1, dp=24, pp=1, ep=12, etp=1), _topo(3, 8, 8)) == 0


def test_result_carries_placement():
    r = simulate(build(cluster={**ACROSS_NODES, "nvlink_domain_gpus": 8}))
    assert r.placement == {"dp": "intra-domain", "pp": "crosses domains", "ep": "intra-domain"}


def test_a_larger_nvlink_domain_holding_the_ep_group_is_never_slower():
    runs = [simulate(build(cluster={**ACROSS_NODES, "nvlink_domain_gpus": d})) for d in (4, 8, 16)]
    for part in ("step", "all_to_all"):
        t = [r.step_time_s if part == "step" else r.time_breakdown_s[part] for r in runs]
        assert t[0] > t[1] * 1.05  # EP on NVLink instead of the NICs
        assert t[2] <= t[1] * (1 + 1e-9)  # a larger domain than the group: no slower


def test_moving_tp_out_of_the_nvlink_domain_is_never_faster():
    # dense, tp 2 × pp 8 on two nodes (no data parallelism to move with it): the default order
    # keeps each TP pair in a node; pp first puts the stages side by side and TP 8 ranks apart
    dense = {"model": "llama-3-8b", "routing": {"distribution": "uniform", "seed": 0}}
    par = {"tp": 2, "pp": 8, "ep": 1}
    inside = simulate(build(**dense, parallel=par))
    outside = simulate(build(**dense, parallel={**par, "order": "pp-tp-cp-ep-dp"}))
    assert inside.placement == {"tp": "intra-node", "pp": "crosses nodes"}
    assert outside.placement == {"tp": "crosses nodes", "pp": "intra-node"}
    assert outside.time_breakdown_s["tp_comm"] > inside.time_breakdown_s["tp_comm"]
    assert outside.step_time_s >= inside.step_time_s


@pytest.mark.parametrize("tier", ["leaf_oversubscription", "pod_oversubscription"])
def test_a_more_oversubscribed_tier_never_speeds_a_step(tier: str):
    # leaves and pods of one node: the EP group (2 nodes) and DP cross both tiers
    steps = []
    for factor in (1.0, 2.0, 4.0):
        fabric = {"leaf_nodes": 1, "pod_nodes": 1, tier: factor}
        r = simulate(build(cluster={**ACROSS_NODES, "fabric": fabric}))
        assert r.placement["ep"] == "crosses pods"
        steps.append(r.step_time_s)
    assert all(b >= a * (1 - 1e-9) for a, b in itertools.pairwise(steps))
    assert steps[-1] > steps[0]


def test_full_fidelity_agrees_with_symmetric_on_a_multi_node_domain():
    sym = simulate(build(cluster={**ACROSS_NODES, "nvlink_domain_gpus": 8}))
    full = simulate(
        build(cluster={**ACROSS_NODES, "nvlink_domain_gpus": 8}, simulation={"fidelity": "full"})
    )
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=0.02)


def test_symmetric_runs_the_straddling_group_and_agrees_with_full_fidelity():
    # 24 GPUs in domains of 12 (nodes of 4), EP 8: the group at 8..15 straddles two domains
    straddle = {
        "parallel": {"tp": 1, "pp": 1, "ep": 8},
        "cluster": {"nodes": 6, "gpus_per_node": 4, "nvlink_domain_gpus": 12},
        "workload": {"stage": "pretrain", "seq_len": 1024, "global_batch": 24},
    }
    sym = simulate(build(**straddle))
    full = simulate(build(**straddle, simulation={"fidelity": "full"}))
    inside = simulate(
        build(
            **{**straddle, "cluster": {**straddle["cluster"], "nodes": 6, "nvlink_domain_gpus": 24}}
        )
    )
    assert sym.placement["ep"] == "crosses domains"
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=0.02)
    assert sym.step_time_s > inside.step_time_s  # the straddle costs: one domain of 24 is faster


def test_a_non_blocking_fabric_times_a_step_as_the_single_tier_network():
    flat = simulate(build(cluster=ACROSS_NODES))
    fabric = {"kind": "rail_optimized", "leaf_nodes": 1, "pod_nodes": 2}
    tiered = simulate(build(cluster={**ACROSS_NODES, "fabric": fabric}))
    assert tiered.placement["ep"] == "crosses leaves"
    assert tiered.step_time_s == pytest.approx(flat.step_time_s, rel=1e-12)
