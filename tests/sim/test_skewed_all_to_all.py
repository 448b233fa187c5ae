"""The symmetric fidelity's all-to-all under routing skew: one flow simulation of the balanced
pattern, then each draw's change in bottleneck-link load (linear in the destination loads)."""

from __future__ import annotations

import numpy as np
import pytest
from sim_scenarios import build

from moesim.sim.run import build_context

FOUR_GPU_NODES = {
    "nodes": 4,
    "gpus_per_node": 4,
    "inter_node": {"nics_per_node": 4, "nic_Gbps": 400, "latency_us": 5},
}


@pytest.mark.parametrize(
    ("cluster", "mode"),
    [
        (FOUR_GPU_NODES, "hierarchical"),  # EP 8 over two nodes: NVLink and RDMA legs
        (FOUR_GPU_NODES, "direct"),
        ({}, "auto"),  # EP 8 inside one node: NVLink only
    ],
)
@pytest.mark.parametrize("kind", ["dispatch", "combine"])
def test_skewed_estimate_equals_the_flow_time_of_the_pattern(cluster, mode, kind):
    ctx = build_context(build(cluster=cluster, simulation={"all_to_all": mode}))
    group = ctx.ep_group(0)
    ep = len(group)
    rng = np.random.default_rng(0)
    per_rank = ctx.tokens_moe * ctx.moe.top_k
    loads = rng.dirichlet(np.full(ep, 0.7), size=6) * per_rank * ep  # strongly skewed
    bytes_per_copy = ctx.model.d_model * 2.0
    est = ctx.skewed_a2a_s(group, loads, per_rank, bytes_per_copy, kind)
    for n, load in enumerate(loads):
        copies = np.tile(load / ep, (ep, 1))
        np.fill_diagonal(copies, 0.0)
        flow_s = ctx.a2a_s(group, copies, bytes_per_copy, kind)
        assert est[n] == pytest.approx(flow_s, rel=0.01)
    balanced = np.full((1, ep), float(per_rank))
    bal = np.full((ep, ep), per_rank / ep)
    np.fill_diagonal(bal, 0.0)
    assert ctx.skewed_a2a_s(group, balanced, per_rank, bytes_per_copy, kind)[0] == pytest.approx(
        ctx.a2a_s(group, bal, bytes_per_copy, kind), rel=1e-12
    )


def test_more_copies_to_one_destination_is_never_faster():
    ctx = build_context(build(cluster=FOUR_GPU_NODES))
    group = ctx.ep_group(0)
    ep = len(group)
    per_rank = ctx.tokens_moe * ctx.moe.top_k
    loads = np.full((ep, ep), float(per_rank))
    loads[np.arange(ep), np.arange(ep)] *= 3.0  # draw n: member n hot
    base = ctx.skewed_a2a_s(group, np.full((1, ep), float(per_rank)), per_rank, 4096.0, "dispatch")
    hot = ctx.skewed_a2a_s(group, loads, per_rank, 4096.0, "dispatch")
    assert (hot > base[0]).all()


@pytest.mark.parametrize("kind", ["dispatch", "combine"])
def test_links_loaded_alike_are_kept_once_and_the_busiest_link_is_unchanged(kind):
    """The load matrix keeps one column per distinct link load; the busiest link of any draw
    (what the estimate reads) is bit for bit the one over every link."""
    ctx = build_context(build(cluster=FOUR_GPU_NODES, simulation={"all_to_all": "hierarchical"}))
    group = ctx.ep_group(0)
    bytes_per_copy = ctx.model.d_model * 2.0
    every_link = ctx.a2a_link_loads(group, bytes_per_copy, kind)
    kept = ctx._a2a_load_matrix(group, bytes_per_copy, kind)
    assert kept.shape[1] == np.unique(every_link, axis=1).shape[1] < every_link.shape[1]
    rng = np.random.default_rng(1)
    skewed = rng.dirichlet(np.full(len(group), 0.5))  # integer counts, as the draws are
    loads = rng.multinomial(10**6, skewed, size=50).astype(float)
    busiest = np.einsum("nr,rl->nl", loads, every_link).max(axis=1)
    assert np.array_equal(np.einsum("nr,rl->nl", loads, kept).max(axis=1), busiest)
    balanced = np.full(len(group), 123.0)
    assert (balanced @ kept).max() == (balanced @ every_link).max()
