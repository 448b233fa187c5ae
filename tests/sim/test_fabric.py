"""Fabric tiers: where a NIC-to-NIC flow turns around and what share of each tier it gets."""

from __future__ import annotations

import pytest

from moesim.sim.collective_timing import flow_time_s
from moesim.sim.collectives import all_to_all_direct
from moesim.sim.fabric import Tiers
from moesim.sim.network import Topology
from moesim.specs.hardware import FabricSpec

GB = 1e9


def tiers(kind: str = "rail_optimized", leaf: int = 2, pod: int = 4, lo=2.0, po=3.0) -> Tiers:
    spec = FabricSpec(
        kind=kind,
        leaf_nodes=leaf,
        pod_nodes=pod,
        leaf_oversubscription=lo,
        pod_oversubscription=po,
    )
    return Tiers.of(spec, nodes=8)


def test_rail_optimized_flows_turn_at_the_leaf_only_on_their_own_rail():
    t = tiers()
    assert t.level(0, 1, 1, 1) == 0  # same leaf group, same rail
    assert t.level(0, 1, 1, 2) == 1  # same leaf group, another rail: up to the spines
    assert t.level(0, 1, 2, 1) == 1  # next leaf group, same pod
    assert t.level(0, 1, 4, 1) == 2  # another pod: the core


def test_top_of_rack_turns_every_rail_at_the_leaf():
    t = tiers(kind="top_of_rack")
    assert t.level(0, 1, 1, 2) == 0
    assert t.level(0, 1, 2, 1) == 1


def test_share_multiplies_the_oversubscriptions_climbed():
    t = tiers(lo=2.0, po=3.0)
    assert [t.share(level) for level in (0, 1, 2)] == [1.0, 2.0, 6.0]
    up, down = t.uplinks(0, 0, 4, 0)
    assert up == [("spine_up[0,0]", 2.0), ("core_up[0,0]", 6.0)]
    assert down == [("spine_down[4,0]", 2.0), ("core_down[4,0]", 6.0)]


def test_a_pod_must_hold_whole_leaves():
    with pytest.raises(ValueError, match=r"pod_nodes .* multiple of leaf_nodes"):
        FabricSpec(leaf_nodes=3, pod_nodes=4)
    with pytest.raises(ValueError, match="pod_oversubscription needs pods"):
        FabricSpec(pod_oversubscription=2.0)


def _cross_pod_all_to_all_s(leaf_os: float, pod_os: float) -> float:
    """An all-to-all among one GPU of each of 4 nodes in 2 pods of 2 nodes, 1 GPU per node."""
    spec = FabricSpec(
        leaf_nodes=1, pod_nodes=2, leaf_oversubscription=leaf_os, pod_oversubscription=pod_os
    )
    topo = Topology(4, 1, 100 * GB, 10 * GB, 1, 0.0, 0.0, tiers=Tiers.of(spec, 4))
    group = (0, 1, 2, 3)
    mat = [[0.0 if i == j else 1e6 for j in range(4)] for i in range(4)]
    return flow_time_s(topo, all_to_all_direct(group, mat))


def test_cross_pod_all_to_all_hand_computed():
    # each NIC sends 3 MB: 1 MB inside its pod (over the leaf share 10/lo GB/s), 2 MB across
    # pods over its core share 10/(lo·po). lo = 1, po = 4: the core share 2.5 GB/s carries
    # 2 MB in 0.8 ms while the NIC (10 GB/s) is not the limit: 0.8 ms
    assert _cross_pod_all_to_all_s(1.0, 4.0) == pytest.approx(2e6 / 2.5e9)
    assert _cross_pod_all_to_all_s(1.0, 1.0) == pytest.approx(3e6 / 10e9)


@pytest.mark.parametrize("tier", ["leaf", "pod"])
def test_a_more_oversubscribed_tier_is_never_faster(tier: str):
    times = [
        _cross_pod_all_to_all_s(*((f, 1.0) if tier == "leaf" else (1.0, f)))
        for f in (1.0, 1.5, 2.0, 4.0, 8.0)
    ]
    assert times == sorted(times)
    assert times[-1] > times[0]


def test_period_is_the_widest_tier_that_is_set():
    assert Tiers.of(FabricSpec(), nodes=64).period_nodes == 1
    assert Tiers.of(FabricSpec(leaf_nodes=8), nodes=64).period_nodes == 8
    assert Tiers.of(FabricSpec(leaf_nodes=8, pod_nodes=32), nodes=64).period_nodes == 32
