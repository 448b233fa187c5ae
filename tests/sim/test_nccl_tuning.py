"""NCCL's tuning model (moesim.sim.nccl_tuning): its pick is the argmin of its own times, small
messages take the low-latency protocols and large ones Simple, times grow with size, and large
messages reach the link bandwidth times the protocol's fraction."""

from __future__ import annotations

import itertools

import pytest

from moesim.sim.nccl_tuning import (
    ALGORITHMS,
    PROTOCOLS,
    NcclSystem,
    algorithm_bw_GBps,
    choices,
    choose,
    latency_us,
    time_us,
)

H100_NODE = NcclSystem(8, 1, "hopper", 370.8, 50.0, nvls=True)
A100_NODE = NcclSystem(8, 1, "ampere", 240.0, 25.0, nvls=False)
H100_16_NODES = NcclSystem(128, 16, "hopper", 370.8, 400.0, nvls=True)
H100_2_NODES = NcclSystem(16, 2, "hopper", 370.8, 400.0, nvls=True)
ONE_GPU_PER_NODE = NcclSystem(32, 32, "hopper", 370.8, 50.0, nvls=True)
SYSTEMS = [H100_NODE, A100_NODE, H100_16_NODES, H100_2_NODES, ONE_GPU_PER_NODE]
KINDS = ["all_reduce", "all_gather", "reduce_scatter"]
SIZES = [2.0**k for k in range(0, 35)] + [318e3, 3e6 + 7, 1.5e9]


@pytest.mark.parametrize("sys", SYSTEMS, ids=lambda s: f"{s.n_ranks}r{s.n_nodes}n-{s.arch}")
@pytest.mark.parametrize("kind", KINDS)
def test_the_pick_is_the_argmin_of_the_predicted_times(sys, kind):
    for nbytes in SIZES:
        cands = choices(kind, nbytes, sys)
        best = choose(kind, nbytes, sys)
        assert best.time_us == min(c.time_us for c in cands)
        # ties go to the first in NCCL's order (topoGetAlgoInfo's strict <)
        assert best == next(c for c in cands if c.time_us == best.time_us)
        # a forced algorithm (NCCL_ALGO) never beats the free pick
        for a in {c.algorithm for c in cands}:
            assert choose(kind, nbytes, sys, (a,)).time_us >= best.time_us


def test_hand_computed_latencies_and_bandwidths():
    # one node of 8: ring LL = 6.6 + 14 steps · 0.6; tree LL = 6.8 + 2·(7 · 0.6)
    assert latency_us("all_reduce", "ring", "LL", H100_NODE) == pytest.approx(15.0)
    assert latency_us("all_reduce", "tree", "LL", H100_NODE) == pytest.approx(15.2)
    assert latency_us("all_reduce", "ring", "Simple", H100_NODE) == pytest.approx(8.4 + 14 * 3.4)
    assert latency_us("all_reduce", "nvls", "Simple", H100_NODE) == pytest.approx(25.0)
    # 16 nodes of 8: tree LL = 6.8 + 2·(7·0.6 + log2(16)·5.0)
    assert latency_us("all_reduce", "tree", "LL", H100_16_NODES) == pytest.approx(55.2)
    # ring across 16 nodes: 254 steps, 30 of them inter-node (4.0 µs LL128), the rest at
    # max(1.9, net overhead 1.0)
    assert latency_us("all_reduce", "ring", "LL128", H100_16_NODES) == pytest.approx(
        14.0 + 224 * 1.9 + 30 * 4.0
    )
    # ring LL on one Hopper node: min(llMaxBw 141, bw/2), then × n/nsteps = 8/14
    assert algorithm_bw_GBps("all_reduce", "ring", "LL", H100_NODE) == pytest.approx(141 * 8 / 14)
    assert algorithm_bw_GBps("all_gather", "ring", "Simple", H100_NODE) == pytest.approx(
        370.8 * 8 / 7
    )


@pytest.mark.parametrize("sys", [H100_NODE, A100_NODE, H100_16_NODES], ids=["h100", "a100", "16n"])
def test_small_messages_take_low_latency_protocols_and_large_ones_simple(sys):
    small = choose("all_reduce", 1024, sys)
    assert small.protocol == "LL"
    assert small.algorithm in ("ring", "tree")
    large = choose("all_reduce", 8e9, sys)
    assert large.protocol == "Simple"
    assert large.algorithm in ("ring", "nvls", "nvls_tree")
    for kind in ("all_gather", "reduce_scatter"):
        assert choose(kind, 1024, sys).protocol == "LL"
        assert choose(kind, 8e9, sys).protocol == "Simple"


def test_many_nodes_take_the_tree_at_medium_sizes():
    """The ring's latency grows with 2(n−1) steps, the tree's with log2(nodes)."""
    picks = {choose("all_reduce", 2.0**k, H100_16_NODES).algorithm for k in range(10, 24)}
    assert "tree" in picks


@pytest.mark.parametrize("sys", SYSTEMS, ids=lambda s: f"{s.n_ranks}r{s.n_nodes}n-{s.arch}")
def test_time_never_falls_as_the_size_grows(sys):
    sizes = sorted(
        {*SIZES, *(1.37 * 2.0**k for k in range(34)), *(2.0**k - 1 for k in range(1, 34))}
    )
    for kind, a, p in itertools.product(KINDS, ALGORITHMS, PROTOCOLS):
        if not any(c.algorithm == a and c.protocol == p for c in choices(kind, 1e6, sys)):
            continue
        times = [time_us(kind, a, p, s, sys) for s in sizes]
        assert all(t2 >= t1 for t1, t2 in itertools.pairwise(times)), (kind, a, p)
    best = [choose("all_reduce", s, sys).time_us for s in sizes]
    assert all(t2 >= t1 for t1, t2 in itertools.pairwise(best))


@pytest.mark.parametrize(("protocol", "fraction"), [("Simple", 1.0), ("LL128", 0.92), ("LL", 0.5)])
def test_large_ring_messages_reach_the_link_times_the_protocol_fraction(protocol, fraction):
    sys = A100_NODE  # 240 · 0.5 = 120 > llMaxBw 87.7 on Ampere: LL is capped there
    n = sys.n_ranks
    t_us = time_us("all_reduce", "ring", protocol, 64e9, sys)
    bus_GBps = 64e9 / (t_us * 1e3) * 2 * (n - 1) / n
    expected = min(sys.intra_GBps * fraction, 87.7 if protocol == "LL" else float("inf"))
    assert bus_GBps == pytest.approx(expected, rel=0.01)
    assert bus_GBps < expected  # the latency still costs something


def test_nvls_needs_an_nvswitch_hopper_node():
    assert "nvls" in {c.algorithm for c in choices("all_reduce", 1e9, H100_NODE)}
    assert "nvls" not in {c.algorithm for c in choices("all_reduce", 1e9, A100_NODE)}
    # across nodes plain NVLS needs CollNet (off): NVLS-tree instead
    algos = {c.algorithm for c in choices("all_reduce", 1e9, H100_2_NODES)}
    assert "nvls" not in algos and "nvls_tree" in algos
    # PAT only with one GPU per node, for all-gather / reduce-scatter
    assert "pat" in {c.algorithm for c in choices("all_gather", 1e6, ONE_GPU_PER_NODE)}
    assert "pat" not in {c.algorithm for c in choices("all_gather", 1e6, H100_2_NODES)}


def test_a_restriction_with_nothing_enabled_is_an_error():
    with pytest.raises(ValueError, match="no NCCL algorithm"):
        choose("all_gather", 1e6, H100_NODE, ("tree",))
