"""Collectives built from flows: textbook closed forms, flow vs alpha–beta, conservation."""

from __future__ import annotations

import pytest

from moesim.sim.collectives import (
    all_gather,
    all_to_all_direct,
    all_to_all_hierarchical,
    alpha_beta_time_s,
    flow_time_s,
    reduce_scatter,
    reversed_collective,
    ring_all_reduce,
    ring_all_reduce_textbook_s,
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
    t = topo(nodes=2)
    g = tuple(range(16))
    m = [[float((i * 7 + j * 3) % 5) * 1e6 for j in range(16)] for i in range(16)]
    for c in (
        all_to_all_direct(g, m),
        all_to_all_hierarchical(
            t,
            g,
            m,
            [
                {n: sum(m[i][j] for j in range(16) if j // 8 == n) for n in (0, 1)}
                for i in range(16)
            ],
        ),
    ):
        assert sum(c.bytes_sent().values()) == pytest.approx(sum(c.bytes_received().values()))
    direct = all_to_all_direct(g, m)
    assert sum(direct.bytes_sent().values()) == pytest.approx(
        sum(m[i][j] for i in range(16) for j in range(16) if i != j)
    )


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
