"""Max-min fair flows on the cluster's links."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.sim.network import Flow, Topology, max_min_rates, simulate_flows

GB = 1e9


def topo(
    nodes: int = 2, gpn: int = 4, nvl: float = 100 * GB, nic: float = 10 * GB, **kw
) -> Topology:
    return Topology(
        nodes, gpn, nvl, nic, nics_per_node=gpn, intra_latency_s=0.0, inter_latency_s=0.0, **kw
    )


def test_max_min_two_flows_share_a_link_and_a_third_gets_the_rest():
    # links 0 (cap 10) and 1 (cap 4): flows A on 0, B on 0+1, C on 1
    rates = max_min_rates([(0,), (0, 1), (1,)], [10.0, 4.0])
    assert rates == pytest.approx([8.0, 2.0, 2.0])


def test_intra_node_route_uses_nvswitch_and_inter_node_uses_rails():
    t = topo()
    links, _ = t.route(0, 1)
    assert [t.names[x] for x in links] == ["nvl_up[0]", "nvl_down[1]"]
    links, _ = t.route(1, 5)  # same rail (local 1)
    assert [t.names[x] for x in links] == ["nic_up[0,1]", "nic_down[1,1]"]
    links, _ = t.route(1, 6)  # PXN: to local 2 on node 0, then rail 2
    assert [t.names[x] for x in links] == [
        "nvl_up[1]",
        "nvl_down[2]",
        "nic_up[0,2]",
        "nic_down[1,2]",
    ]


def test_spine_links_exist_only_when_oversubscribed():
    assert not any("spine" in n for n in topo().names)
    t = topo(spine_oversubscription=2.0)
    links, _ = t.route(0, 4)
    assert any(t.names[x] == "spine_up[0]" for x in links)
    assert t.capacity_Bps[t.names.index("spine_up[0]")] == pytest.approx(4 * 10 * GB / 2)


def test_one_flow_takes_bytes_over_bottleneck_plus_latency():
    t = Topology(2, 4, 100 * GB, 10 * GB, 4, intra_latency_s=3e-6, inter_latency_s=5e-6)
    r = simulate_flows(t, [Flow(0, 4, 1 * GB)])
    assert r.makespan_s == pytest.approx(0.1 + 5e-6)


def test_flows_speed_up_when_a_competitor_finishes():
    t = topo()
    # two flows on NIC rail 0: 1 GB and 2 GB at 10 GB/s; the first ends at 0.2 s (5 GB/s each),
    # the second then has 1 GB left at 10 GB/s: 0.3 s
    r = simulate_flows(t, [Flow(0, 4, 1 * GB), Flow(0, 4, 2 * GB)])
    assert r.finish_s == pytest.approx([0.2, 0.3])


def test_late_starting_flow_shares_from_its_start():
    t = topo()
    r = simulate_flows(t, [Flow(0, 4, 2 * GB), Flow(0, 4, 1 * GB, start_s=0.1)])
    # 0..0.1: first alone sends 1 GB; then both at 5 GB/s: 1 GB each: 0.3 s
    assert r.finish_s == pytest.approx([0.3, 0.3])


@settings(max_examples=40, deadline=None)
@given(
    flows=st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 7), st.floats(1e3, 1e9)),
        min_size=1,
        max_size=12,
    ),
    scale=st.floats(1.01, 8.0),
)
def test_more_bandwidth_is_never_slower(flows, scale):
    base = [Flow(s, d, b) for s, d, b in flows]
    slow = simulate_flows(topo(nvl=50 * GB, nic=5 * GB), base).makespan_s
    fast = simulate_flows(topo(nvl=50 * GB * scale, nic=5 * GB * scale), base).makespan_s
    assert fast <= slow * (1 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 7)), min_size=1, max_size=16))
def test_max_min_rates_never_exceed_capacity(pairs):
    t = topo()
    routes = [t.route(s, d)[0] for s, d in pairs if s != d]
    rates = max_min_rates(routes, t.capacity_Bps)
    load = [0.0] * len(t.capacity_Bps)
    for r, rate in zip(routes, rates, strict=True):
        for link in r:
            load[link] += rate
    assert all(x <= c * (1 + 1e-9) for x, c in zip(load, t.capacity_Bps, strict=True))
    # every flow is bottlenecked somewhere: one of its links is full
    for r in routes:
        assert any(load[link] >= t.capacity_Bps[link] * (1 - 1e-9) for link in r)


def test_vanishing_flows_finish_instead_of_stalling():
    # 5e-318 bytes at 1e10 B/s takes 5e-328 s, which underflows to 0: before the floor such a
    # flow never drained and simulate_flows looped forever
    t = topo()
    r = simulate_flows(t, [Flow(0, 1, 5e-318), Flow(0, 2, 1 * GB), Flow(3, 1, 1e-7)])
    assert r.finish_s[0] == 0.0 and r.finish_s[2] == 0.0
    assert r.finish_s[1] == pytest.approx(simulate_flows(t, [Flow(0, 2, 1 * GB)]).makespan_s)


def test_a_multi_node_nvlink_domain_routes_over_nvlink_and_leaves_it_over_the_nics():
    t = topo(nodes=4, gpn=4, domain_gpus=8)  # two domains of two nodes
    links, _ = t.route(1, 6)  # nodes 0 and 1, one domain
    assert [t.names[x] for x in links] == ["nvl_up[1]", "nvl_down[6]"]
    links, _ = t.route(1, 9)  # node 0 to node 2: another domain, same rail
    assert [t.names[x] for x in links] == ["nic_up[0,1]", "nic_down[2,1]"]


def test_a_domain_smaller_than_a_node_sends_across_it_through_the_nics():
    t = topo(nodes=1, gpn=8, nvl=100 * GB, domain_gpus=4)
    links, _ = t.route(0, 5)  # no PXN: GPU 5, the proxy on rail 5, is outside 0's domain
    assert [t.names[x] for x in links] == ["nic_up[0,0]", "nic_down[0,5]"]


def test_fabric_routes_climb_only_the_tiers_the_ends_do_not_share():
    from moesim.sim.fabric import Tiers
    from moesim.specs.hardware import FabricSpec

    spec = FabricSpec(leaf_nodes=1, pod_nodes=2, leaf_oversubscription=2, pod_oversubscription=3)
    t = topo(nodes=4, gpn=2, tiers=Tiers.of(spec, 4))
    names = lambda s, d: [t.names[x] for x in t.route(s, d)[0]]  # noqa: E731
    assert names(0, 2) == ["nic_up[0,0]", "spine_up[0,0]", "spine_down[1,0]", "nic_down[1,0]"]
    across_pods = names(0, 4)
    assert "core_up[0,0]" in across_pods and "core_down[2,0]" in across_pods
    cap = {n: t.capacity_Bps[t.names.index(n)] for n in across_pods}
    assert cap["core_up[0,0]"] == pytest.approx(10 * GB / 6)
    assert cap["spine_up[0,0]"] == pytest.approx(10 * GB / 2)


def test_links_are_made_on_first_use_so_a_huge_cluster_costs_nothing_up_front():
    t = topo(nodes=10**9, gpn=8)
    assert t.names == []
    t.route(0, 8 * (10**9 - 1))
    assert len(t.names) == 2  # the two NICs: no per-GPU list was built
