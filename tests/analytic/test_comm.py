"""Communication volumes: ring formulas, all-to-all placement, node-limited routing."""

from __future__ import annotations

import pytest

from moesim.analytic.comm import (
    all_to_all_volume,
    cp_kv_bytes,
    ep_placement,
    expected_distinct_bins,
    expected_nodes_per_token,
    gradient_sync,
    pp_send_bytes,
    ring_all_reduce_bytes,
    ring_reduce_scatter_bytes,
    tp_collective_bytes,
)
from moesim.catalog import load_gpu, load_model
from moesim.specs import ClusterSpec, ParallelSpec, Precision


def _cluster(nodes: int, gpu: str = "h800-sxm") -> ClusterSpec:
    return ClusterSpec(gpu=load_gpu(gpu), nodes=nodes)


def test_ring_volumes():
    assert ring_reduce_scatter_bytes(800, 8) == 700
    assert ring_all_reduce_bytes(800, 8) == 1400
    assert ring_all_reduce_bytes(800, 1) == 0


def test_distinct_bins_matches_brute_force():
    """8 experts in 4 bins of 2, draw 2 without replacement: P(same bin) = 4·C(2,2)/C(8,2) = 1/7,
    so E[bins] = 2 − 1/7."""
    assert expected_distinct_bins(8, 4, 2, 2) == pytest.approx(2 - 1 / 7)
    assert expected_distinct_bins(8, 4, 2, 7) == 4


def test_all_to_all_within_a_node_uses_no_rdma():
    m = load_model("mixtral-8x7b")
    p = ParallelSpec(ep=8, dp=8)
    v = all_to_all_volume(m, p, _cluster(1), tokens=4096, bytes_per_element=2)
    assert v.inter_node_bytes == 0
    # 4096 tokens × 2 copies × 4096 values × 2 B, 7/8 of them leave the GPU
    assert v.sent_bytes == pytest.approx(4096 * 2 * 4096 * 2 * 7 / 8)
    assert v.sent_bytes + v.local_bytes == pytest.approx(4096 * 2 * 4096 * 2)


@pytest.mark.parametrize("bytes_per_element", [1.0, 2.0])
def test_all_to_all_without_expert_parallelism_keeps_every_copy_local(bytes_per_element):
    """ep = 1: every expert is on the GPU, so nothing is sent and the local copies are the whole
    dispatch, in bytes: tokens × top_k × d_model × bytes per element (fp8 half of bf16)."""
    m = load_model("mixtral-8x7b")
    v = all_to_all_volume(m, ParallelSpec(ep=1, dp=8), _cluster(1), 4096, bytes_per_element)
    assert v.sent_bytes == 0
    assert v.local_bytes == 4096 * 2 * 4096 * bytes_per_element
    # the same total as with ep = 8, where the bytes only split between local and sent
    spread = all_to_all_volume(m, ParallelSpec(ep=8, dp=8), _cluster(1), 4096, bytes_per_element)
    assert v.local_bytes == pytest.approx(spread.local_bytes + spread.sent_bytes)


def test_all_to_all_of_a_dense_model_is_empty():
    v = all_to_all_volume(load_model("llama-3-8b"), ParallelSpec(dp=8), _cluster(1), 4096, 2)
    assert (v.intra_node_bytes, v.inter_node_bytes, v.local_bytes) == (0, 0, 0)


def test_all_to_all_across_nodes_and_hierarchical_dedup():
    m = load_model("deepseek-v3")
    p = ParallelSpec(pp=16, ep=64, dp=128)
    c = _cluster(256)
    direct = all_to_all_volume(m, p, c, 4096, 1.0)
    hier = all_to_all_volume(m, p, c, 4096, 1.0, hierarchical=True)
    # 8 EP ranks per node out of 64: 7/8 of the copies cross nodes
    assert direct.inter_node_bytes == pytest.approx(4096 * 8 * 7168 * 7 / 8)
    assert hier.inter_node_bytes < direct.inter_node_bytes
    # what leaves the GPU (or is forwarded on its behalf) is conserved
    assert hier.sent_bytes == pytest.approx(direct.sent_bytes)


def test_node_limited_routing_reaches_fewer_nodes():
    v3 = load_model("deepseek-v3")
    unlimited = v3.model_copy(
        update={"moe": v3.moe.model_copy(update={"topk_groups": None, "n_groups": 1})}
    )
    place = ep_placement(ParallelSpec(pp=16, ep=64, dp=128), _cluster(256))
    assert place.nodes == 8
    limited_nodes = expected_nodes_per_token(v3, place)
    assert limited_nodes <= 4
    assert expected_nodes_per_token(unlimited, place) > limited_nodes


def test_tp_and_pp_volumes_zero_without_parallelism():
    m = load_model("llama-3-8b")
    assert tp_collective_bytes(m, ParallelSpec(dp=1), 4096, 2) == 0
    assert pp_send_bytes(m, ParallelSpec(dp=1), 4096, 2) == 0
    # tp 8 with SP: 2 × (AG + RS) of 4096·4096·2 B, 7/8 each
    assert tp_collective_bytes(m, ParallelSpec(tp=8, dp=1), 4096, 2) == pytest.approx(
        4 * 4096 * 4096 * 2 * 7 / 8
    )
    assert pp_send_bytes(m, ParallelSpec(tp=2, pp=4, dp=1), 4096, 2) == 4096 * 4096


def test_gradient_sync_groups():
    p = ParallelSpec(ep=8, dp=16)
    g = gradient_sync(1e9, 2e9, p, Precision())
    assert (g.dp_group, g.edp_group, g.reduce_scatter) == (16, 2, True)
    assert g.wire_bytes() == pytest.approx(2 * (2e9 * 15 / 16 + 4e9 * 1 / 2))
    g0 = gradient_sync(1e9, 0, ParallelSpec(dp=16, zero_stage=0), Precision())
    assert g0.wire_bytes() == pytest.approx(2 * 2e9 * 15 / 16)


def test_cp_kv_chunk_bytes_by_hand():
    llama = load_model("llama-3-8b")  # 8 KV heads of 128
    assert cp_kv_bytes(llama, ParallelSpec(dp=1), 32768, 2) == 0  # cp = 1: no ring
    # tp 2, cp 4: 8192 tokens × (K and V) × 4 heads × 128 × 2 B = 16 MiB
    assert cp_kv_bytes(llama, ParallelSpec(tp=2, cp=4, dp=1), 32768, 2) == 8192 * 2 * 4 * 128 * 2
    # tp 16 > 8 KV heads: each rank keeps one (replicated) head; mbs 2 doubles the tokens
    p = ParallelSpec(tp=16, cp=2, dp=1, microbatch_size=2)
    assert cp_kv_bytes(llama, p, 4096, 2) == 4096 * 2 * 1 * 128 * 2
    # MLA exchanges up-projected K (128 nope + 64 rope) and V (128) of 128 heads, not the latent
    v3 = load_model("deepseek-v3")
    assert cp_kv_bytes(v3, ParallelSpec(tp=4, cp=2, dp=1), 4096, 2) == 2048 * 32 * 320 * 2
