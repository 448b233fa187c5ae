"""The rank grid: Megatron-Core's placement of the parallel dimensions (``parallel.order``)."""

from __future__ import annotations

import itertools

import pytest

from moesim.sim.grid import Grid

# tp 2, cp 2, dp 4, pp 2 (32 GPUs); experts ep 4 × etp 2 × edp 2 per stage
DIMS = {"tp": 2, "cp": 2, "dp": 4, "pp": 2, "ep": 4, "etp": 2}


def test_default_order_is_megatrons_closed_form():
    """Oracle: g = tp_r + tp·(cp_r + cp·(dp_r + dp·pp_r)); experts q = etp_r + etp·(ep_r +
    ep·edp_r) inside a stage (Megatron-Core's RankGenerator with tp-cp-ep-dp-pp)."""
    gr = Grid(**DIMS)
    tp, cp, dp, ep, etp = 2, 2, 4, 4, 2
    for g in range(gr.gpus):
        stage, q = divmod(g, tp * cp * dp)
        assert gr.coords(g) == (stage, q)
        assert gr.tp_group(g) == tuple(g - g % tp + i for i in range(tp))
        tp_r = q % tp
        assert gr.dp_group(g) == tuple(stage * 16 + tp_r + tp * j for j in range(cp * dp))
        etp_r, edp_r = q % etp, q // (etp * ep)
        expect = tuple(stage * 16 + etp_r + etp * (e + ep * edp_r) for e in range(ep))
        assert gr.ep_group(g) == expect
        assert gr.ep_group(g)[gr.ep_rank(g)] == g
        assert gr.pp_peer(g, 1) == (g + 16) % 32


@pytest.mark.parametrize(
    "order", ["-".join(p) for p in itertools.permutations(["tp", "cp", "ep", "dp"])]
)
def test_every_order_partitions_the_ranks_into_groups_of_the_right_size(order: str):
    gr = Grid(**DIMS, order=(*order.split("-"), "pp"))
    for name, size in (("tp_group", 2), ("cp_group", 2), ("dp_group", 8), ("ep_group", 4)):
        groups = set()
        for g in range(gr.gpus):
            grp = getattr(gr, name)(g)
            assert len(set(grp)) == size and g in grp
            # a group holds one stage's ranks
            assert {gr.coords(x)[0] for x in grp} == {gr.coords(g)[0]}
            groups.add(frozenset(grp))
        # the groups of a kind partition the ranks: disjoint, and covering all of them
        assert sum(len(x) for x in groups) == gr.gpus == len(set().union(*groups))
    for g in range(gr.gpus):
        assert gr.gpu(*gr.coords(g)) == g


def test_tp_last_before_pp_spreads_tp_across_the_stage():
    # order dp-cp-ep-tp-pp: tp varies slowest inside a stage, its members 8 ranks apart
    gr = Grid(**DIMS, order=("dp", "cp", "ep", "tp", "pp"))
    assert gr.tp_group(0) == (0, 8)
    assert gr.dp_group(0) == (0, 1, 2, 3, 4, 5, 6, 7)


def test_pp_first_interleaves_the_stages():
    gr = Grid(tp=2, cp=1, dp=2, pp=2, ep=2, etp=1, order=("pp", "tp", "cp", "ep", "dp"))
    assert gr.pp_group(0) == (0, 1)
    assert [gr.coords(g)[0] for g in range(8)] == [0, 1] * 4
    assert gr.pp_peer(0, 1) == 1
    assert gr.tp_group(0) == (0, 2)


def test_groups_scan_is_bounded():
    gr = Grid(tp=8, cp=1, dp=10**8, pp=1, ep=1, etp=1)
    groups = gr.groups("dp", limit_gpus=64)
    assert len(groups) == 8 and all(len(g) == 64 for g in groups)
