"""Two-batch overlap: the overlapped time against hand-computed cases, its bounds, the splits,
and a step never slower with it than without."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from serving_scale_scenarios import serving

from moesim.sim.engine_step import build_engine_step
from moesim.sim.serving_step import ReplicaCost
from moesim.sim.two_batch_overlap import overlapped_s, split_batch, split_chunks, tbo_step_s


@dataclass
class Part:
    attention_s: float = 0.0
    dense_ffn_s: float = 0.0
    experts_s: float = 0.0
    lm_head_s: float = 0.0
    tp_comm_s: float = 0.0
    all_to_all_s: float = 0.0
    pp_comm_s: float = 0.0
    offload_s: float = 0.0

    @property
    def total_s(self) -> float:
        return sum(vars(self).values())


def test_overlap_hides_the_smaller_of_compute_and_all_to_all():
    # all layers MoE: halves of 3 s compute and 2 s all-to-all -> 2·max(3, 2) = 6 (not 10)
    h = Part(experts_s=3.0, all_to_all_s=2.0)
    assert overlapped_s(h, h, 1.0) == pytest.approx(6.0)
    # comm-bound halves: 2·max(1, 4) = 8
    c = Part(experts_s=1.0, all_to_all_s=4.0)
    assert overlapped_s(c, c, 1.0) == pytest.approx(8.0)
    # dense layers' share does not overlap: half the attention stays exposed
    d = Part(attention_s=2.0, all_to_all_s=1.0)
    assert overlapped_s(d, d, 0.5) == pytest.approx(2 * max(1.0, 1.0) + 2 * 1.0)
    # DeepEP normal's SMs slow the compute under a transfer
    assert overlapped_s(h, h, 1.0, sm_slowdown=1.5) == pytest.approx(2 * 4.5)


@pytest.mark.parametrize(
    ("ca", "da", "cb", "db"), [(3, 2, 3, 2), (1, 5, 2, 1), (0.1, 0.2, 4, 0), (2, 2, 2, 2)]
)
def test_overlap_is_bounded_below_by_compute_and_by_comm(ca, da, cb, db):
    a, b = Part(experts_s=ca, all_to_all_s=da), Part(experts_s=cb, all_to_all_s=db)
    t = overlapped_s(a, b, 1.0)
    assert t >= ca + cb - 1e-12 and t >= da + db - 1e-12
    assert t <= a.total_s + b.total_s + 1e-12


def test_tbo_step_never_exceeds_the_whole_step():
    full = Part(experts_s=1.0, all_to_all_s=0.1)
    half = Part(experts_s=0.9, all_to_all_s=0.05)  # weights read twice: splitting costs
    assert tbo_step_s(full, half, half, 1.0) == pytest.approx(full.total_s)


def test_splits_keep_every_sequence_and_token():
    (a, ca), (b, cb) = split_batch(7, 700.0)
    assert (a, b) == (4, 3) and ca + cb == pytest.approx(700.0)
    chunks = [(0, 512), (100, 300), (0, 2048), (50, 10)]
    x, y = split_chunks(chunks)
    assert sorted(x + y) == sorted(chunks)
    assert abs(sum(c for _, c in x) - sum(c for _, c in y)) <= 2048
    (one,), (two,) = split_chunks([(64, 1001)])
    assert one == (64, 501) and two == (565, 500)


def _pair(model: str, nodes: int, parallel: dict):
    on = serving(model, nodes=nodes, parallel=parallel, two_batch_overlap=True)
    off = serving(model, nodes=nodes, parallel=parallel)
    return (
        build_engine_step(on, ReplicaCost(on), ReplicaCost),
        build_engine_step(off, ReplicaCost(off), ReplicaCost),
    )


@pytest.mark.parametrize(
    ("model", "nodes", "ep", "dispatcher"),
    [
        ("mixtral-8x7b", 1, 8, "alltoall"),
        ("mixtral-8x7b", 1, 8, "deepep"),
        ("qwen3-30b-a3b", 2, 16, "deepep"),
        ("qwen3-30b-a3b", 2, 16, "deepep_low_latency"),
    ],
)
def test_tbo_is_never_slower(model, nodes, ep, dispatcher):
    e_on, e_off = _pair(model, nodes, {"tp": 1, "ep": ep, "moe_dispatcher": dispatcher})
    for b in (1, 2, 16, 128, 512):
        assert e_on.decode_s(b, b * 600.0) <= e_off.decode_s(b, b * 600.0) + 1e-15
    for chunks in ([(0, 4096), (0, 4096)], [(0, 100)], [(30, 1)]):
        assert e_on.prefill_s(chunks, 1) <= e_off.prefill_s(chunks, 1) + 1e-15


def test_tbo_hides_the_all_to_all_of_cross_node_ep():
    # EP over two nodes: the prefill's DeepEP normal all-to-all (RDMA) and a large decode
    # batch's low-latency one are big enough that overlapping them pays
    e_on, e_off = _pair("qwen3-30b-a3b", 2, {"tp": 1, "ep": 16, "moe_dispatcher": "deepep"})
    chunks = [(0, 4096), (0, 4096)]
    full = e_off.cost.prefill_chunks(chunks, 2)
    assert e_on.prefill_s(chunks, 2) < 0.8 * full.total_s
    assert e_on.prefill_s(chunks, 2) >= max(full.compute_s, full.all_to_all_s)
    ll = {"tp": 1, "ep": 16, "moe_dispatcher": "deepep_low_latency"}
    e_on, e_off = _pair("qwen3-30b-a3b", 2, ll)
    assert e_on.decode_s(512, 512 * 600.0) < 0.8 * e_off.decode_s(512, 512 * 600.0)
