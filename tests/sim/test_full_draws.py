"""Full fidelity's per-source routing draws: the all-to-all estimate against the flow
simulation of the same pattern, and draws that do not depend on how they are blocked."""

from __future__ import annotations

import numpy as np
import pytest
from sim_scenarios import build

from moesim.sim import full_draws
from moesim.sim.run import build_context

FOUR_GPU_NODES = {
    "nodes": 4,
    "gpus_per_node": 4,
    "inter_node": {"nics_per_node": 4, "nic_Gbps": 400, "latency_us": 5},
}


@pytest.mark.parametrize(
    ("cluster", "mode"),
    [(FOUR_GPU_NODES, "hierarchical"), (FOUR_GPU_NODES, "direct"), ({}, "auto")],
)
@pytest.mark.parametrize("skew", [0.0, 1.0, 2.0])
def test_estimate_is_within_two_percent_of_the_flow_time(cluster, mode, skew):
    routing = {"distribution": "zipf", "skew": skew, "seed": 3}
    ctx = build_context(build(cluster=cluster, simulation={"all_to_all": mode}, routing=routing))
    group = ctx.ep_group(0)
    ep = len(group)
    counts = next(ctx.sampler.draw_per_source(6, ctx.tokens_moe, 0, 0))
    copies = counts.reshape(6, ep, ep, -1).sum(axis=3).astype(float)
    offered = ctx.tokens_moe * ctx.moe.top_k
    for kind in ("dispatch", "combine"):
        est = full_draws.pattern_a2a_s(ctx, group, copies, offered, 4096.0, kind)
        for n in range(len(copies)):
            off_diag = copies[n].copy()
            np.fill_diagonal(off_diag, 0.0)
            assert est[n] == pytest.approx(ctx.a2a_s(group, off_diag, 4096.0, kind), rel=0.02)


def test_a_hot_destination_is_never_faster():
    ctx = build_context(build(cluster=FOUR_GPU_NODES))
    group = ctx.ep_group(0)
    ep = len(group)
    offered = ctx.tokens_moe * ctx.moe.top_k
    bal = np.full((1, ep, ep), offered / ep)
    hot = bal.copy()
    hot[0, :, 3] *= 2.0  # every member sends twice as much to member 3
    t_bal, t_hot = (
        full_draws.pattern_a2a_s(ctx, group, c, offered, 4096.0, "dispatch") for c in (bal, hot)
    )
    assert t_hot[0] > t_bal[0]


def test_draws_do_not_depend_on_the_block_size(monkeypatch):
    s = build(routing={"distribution": "zipf", "skew": 1.2, "seed": 4})
    tables = []
    for block in (1, 7, 10_000):
        monkeypatch.setattr(full_draws, "DRAW_BLOCK", block)
        ctx = build_context(s, fidelity="full")
        group = ctx.ep_group(0)
        tables.append(full_draws.group_draws(ctx, group, 20, 0, 4096.0, 8192.0))
    for t in tables[1:]:
        assert np.array_equal(t.received_NR, tables[0].received_NR)
        assert np.array_equal(t.dispatch_N, tables[0].dispatch_N)
        assert np.array_equal(t.combine_N, tables[0].combine_N)
    # every member's copies are its experts' share of the group's tokens · k
    ctx = build_context(s, fidelity="full")
    assert tables[0].received_NR.sum(axis=1) == pytest.approx(
        len(ctx.ep_group(0)) * ctx.tokens_moe * ctx.moe.top_k
    )
