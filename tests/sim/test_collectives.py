"""Collectives built from flows: textbook closed forms, flow vs alpha–beta, conservation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.sim.collective_timing import (
    alpha_beta_time_s,
    flow_time_s,
    nccl_system,
    nccl_time_s,
    phase_link_load,
    ring_all_reduce_textbook_s,
)
from moesim.sim.collectives import (
    all_gather,
    all_to_all_direct,
    all_to_all_hierarchical,
    reduce_scatter,
    reversed_collective,
    ring_all_reduce,
    tree_all_reduce,
)
from moesim.sim.network import Topology

GB = 1e9


def topo(nodes=2, gpn=8, nvl=400 * GB, nic=50 * GB, lat_intra=3e-6, lat_inter=5e-6) -> Topology:
    return Topology(nodes, gpn, nvl, nic, gpn, lat_intra, lat_inter)


def test_ring_all_reduce_on_one_node_matches_the_textbook():
    t = topo(nodes=1)
    group = tuple(range(8))
    c = ring_all_reduce(t, group, 1 * GB)
    expected = ring_all_reduce_textbook_s(8, 1 * GB, 400 * GB, 3e-6)
    assert flow_time_s(t, c) == pytest.approx(expected, rel=1e-9)
    assert alpha_beta_time_s(t, c) == pytest.approx(expected, rel=1e-9)


def test_multi_node_ring_uses_every_rail():
    # 16 GPUs on 2 nodes: 8 channels each leave a node on a different rail, so the node
    # crossing has 8 NICs (400 GB/s) against 8 × 400 GB/s of NVLink: the step is NVLink- and
    # NIC-bound alike per GPU: S/n per GPU per step over min(400, 8·50/1 per channel...)
    t = topo(lat_intra=0.0, lat_inter=0.0)
    group = tuple(range(16))
    c = ring_all_reduce(t, group, 1.6 * GB)
    # per step each node sends S/n = 0.1 GB across its 8 NICs: 0.1 GB / 400 GB/s
    step_s = max(0.1 * GB / (8 * 50 * GB), 0.1 * GB / (400 * GB))
    assert flow_time_s(t, c) == pytest.approx(2 * 15 * step_s, rel=1e-6)


@pytest.mark.parametrize("build", [reduce_scatter, all_gather, ring_all_reduce, tree_all_reduce])
@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_flow_and_alpha_beta_agree_on_symmetric_collectives(build, nodes):
    t = topo(nodes=nodes)
    group = tuple(range(nodes * 8))
    c = build(t, group, 0.5 * GB)
    flow, ab = flow_time_s(t, c), alpha_beta_time_s(t, c)
    assert flow == pytest.approx(ab, rel=0.02)


def test_degree_one_costs_nothing():
    t = topo(nodes=1)
    for build in (reduce_scatter, all_gather, ring_all_reduce, tree_all_reduce):
        c = build(t, (3,), 1 * GB)
        assert flow_time_s(t, c) == 0.0 == alpha_beta_time_s(t, c)


def test_reduce_scatter_plus_all_gather_equals_all_reduce():
    t = topo(nodes=2)
    g = tuple(range(16))
    rs, ag, ar = (f(t, g, GB) for f in (reduce_scatter, all_gather, ring_all_reduce))
    assert flow_time_s(t, rs) + flow_time_s(t, ag) == pytest.approx(flow_time_s(t, ar))


def _uniform_matrix(n: int, b: float) -> list[list[float]]:
    return [[0.0 if i == j else b for j in range(n)] for i in range(n)]


def test_all_to_all_bytes_sent_equal_bytes_received():
    """Per GPU, not only in total: what a GPU receives beyond what it forwards (the relay leg of
    the hierarchical all-to-all) is exactly its demand, and what crosses the NICs is the RDMA
    leg; a lost, doubled or misrouted leg breaks one of these."""
    t = topo(nodes=2)
    g = tuple(range(16))
    m = [[float((i * 7 + j * 3) % 5 + (i == 3)) * 1e6 for j in range(16)] for i in range(16)]
    rdma = [{n: sum(m[i][j] for j in range(16) if j // 8 == n) for n in (0, 1)} for i in range(16)]
    demand_in = {d: sum(m[i][d] for i in range(16) if i != d) for d in g}
    demand_out = {s: sum(m[s][j] for j in range(16) if j != s) for s in g}
    direct = all_to_all_direct(g, m)
    hier = all_to_all_hierarchical(t, g, m, rdma)
    assert direct.bytes_sent() == pytest.approx(demand_out)
    assert direct.bytes_received() == pytest.approx(demand_in)
    for c in (direct, hier):
        sent, recv = c.bytes_sent(), c.bytes_received()
        for d in g:
            assert recv.get(d, 0.0) - sent.get(d, 0.0) == pytest.approx(
                demand_in[d] - demand_out[d]
            )
        back = reversed_collective(c, "combine")
        assert back.bytes_sent() == pytest.approx(recv)
        assert back.bytes_received() == pytest.approx(sent)
    load, _ = phase_link_load(t, hier.phases[0])
    nic_bytes = sum(b for link, b in load.items() if t.names[link].startswith("nic_up"))
    remote = sum(rdma[i][n] for i in range(16) for n in (0, 1) if n != i // 8)
    assert nic_bytes == pytest.approx(remote)
    # the relay leg exists: GPUs forward bytes they do not need themselves
    assert sum(hier.bytes_sent().values()) > sum(demand_out.values())


def test_uniform_all_to_all_inside_a_node_is_nvlink_bound():
    t = topo(nodes=1, lat_intra=0.0)
    g = tuple(range(8))
    c = all_to_all_direct(g, _uniform_matrix(8, 1e8))
    assert flow_time_s(t, c) == pytest.approx(7 * 1e8 / (400 * GB))
    assert alpha_beta_time_s(t, c) == pytest.approx(flow_time_s(t, c))


def test_hierarchical_all_to_all_beats_direct_when_tokens_repeat_per_node():
    # each token needs 4 GPUs of the remote node: DeepEP sends it once over RDMA
    t = topo(nodes=2, lat_intra=0.0, lat_inter=0.0)
    g = tuple(range(16))
    m = _uniform_matrix(16, 1e7)
    rdma = [{1 - i // 8: 8 * 1e7 / 4} for i in range(16)]
    direct = flow_time_s(t, all_to_all_direct(g, m))
    hier = flow_time_s(t, all_to_all_hierarchical(t, g, m, rdma))
    assert hier < direct


def test_combine_is_dispatch_reversed():
    g = tuple(range(16))
    m = [[float(i + 2 * j) * 1e6 if i != j else 0.0 for j in range(16)] for i in range(16)]
    d = all_to_all_direct(g, m)
    c = reversed_collective(d, "combine")
    assert c.bytes_sent() == d.bytes_received()


@settings(max_examples=25, deadline=None)
@given(
    # a weight is 0 or at least 1e-3 (1 kB): flows under network.NEGLIGIBLE_BYTES count as done
    weights=st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 10.0)), min_size=16, max_size=16),
    hierarchical=st.booleans(),
)
def test_flow_time_of_skewed_all_to_all_is_bounded_by_its_alpha_beta_terms(weights, hierarchical):
    """On skewed patterns the two network modes differ, and this is how: the flow time is never
    below the bandwidth term (no link beats its capacity) and, as every flow crosses the
    bottleneck-free rest of the fabric at its fair share, stays within the latency term of it
    for these one-phase all-to-alls whose sources are alike."""
    t = topo(nodes=2)
    g = tuple(range(16))
    m = [[0.0 if i == j else 1e6 * weights[j] for j in range(16)] for i in range(16)]
    if hierarchical:
        rdma = [{n: sum(m[i][j] for j in range(16) if j // 8 == n) for n in (0, 1)} for i in g]
        c = all_to_all_hierarchical(t, g, m, rdma)
    else:
        c = all_to_all_direct(g, m)
    if not c.phases:
        return
    load, _ = phase_link_load(t, c.phases[0])
    beta_s = max(b / t.capacity_Bps[link] for link, b in load.items())
    flow = flow_time_s(t, c)
    assert flow >= beta_s * (1 - 1e-9)
    assert flow <= alpha_beta_time_s(t, c) * (1 + 1e-6)


def test_nccl_system_reads_the_groups_links():
    """NCCL's graph bandwidth per GPU: the NVLink port; across nodes the rails the group's GPUs
    on a node use (ppn × the node's NICs per GPU), over the spine's oversubscription."""
    t = topo()
    whole = nccl_system(t, tuple(range(16)), "hopper", True)
    assert (whole.n_ranks, whole.n_nodes) == (16, 2)
    assert whole.intra_GBps == pytest.approx(400) and whole.inter_GBps == pytest.approx(400)
    rail = nccl_system(t, (0, 8), "hopper", True)  # one GPU per node: its own NIC
    assert rail.inter_GBps == pytest.approx(50)
    oversub = Topology(2, 8, 400 * GB, 50 * GB, 8, 3e-6, 5e-6, spine_oversubscription=2.0)
    assert nccl_system(oversub, tuple(range(16)), "hopper", True).inter_GBps == pytest.approx(200)


def test_nccl_time_is_zero_for_nothing_to_do_and_grows_with_the_group():
    t = topo()
    assert nccl_time_s(t, (0,), "all_reduce", 1e6, "hopper", True) == (0.0, None)
    assert nccl_time_s(t, (0, 1), "all_reduce", 0.0, "hopper", True) == (0.0, None)
    small, _ = nccl_time_s(t, tuple(range(8)), "all_reduce", 1e6, "hopper", True)
    large, _ = nccl_time_s(t, tuple(range(16)), "all_reduce", 1e6, "hopper", True)
    assert 0 < small < large
