"""The KV cache of a prompt between pools: its bytes by hand, the link each placement takes, and
one replica's transfers queueing on its links."""

from __future__ import annotations

import pytest
from serving_scale_scenarios import serving

from moesim.sim.costmodel import CostModel
from moesim.sim.kv_transfer import KVLink, TransferQueue, kv_link, kv_transfer_s, prompt_kv_bytes
from moesim.sim.profile import resolve_profile
from moesim.specs.scenario import pool_scenario


def pd(prefill: dict, decode: dict, nodes: int = 1, model: str = "llama-3-70b", **kw):
    return serving(
        model,
        nodes=nodes,
        arrival_rate_per_s=2.0,
        duration_s=5.0,
        disaggregated={"prefill": prefill, "decode": decode, **kw},
    )


def _cm(s) -> CostModel:
    return CostModel(s.cluster.gpu, resolve_profile(None, s.cluster.gpu.name), "bf16")


def test_prompt_kv_bytes_by_hand():
    s = pd({"gpus": 4, "tp": 4}, {"gpus": 4, "tp": 4})
    # Llama-3-70B: 80 layers, 8 KV heads of 128, bf16 K and V
    assert prompt_kv_bytes(s, 512) == pytest.approx(512 * 80 * 2 * 8 * 128 * 2)


def test_transfer_time_by_hand():
    s = pd({"gpus": 2, "tp": 2}, {"gpus": 6, "tp": 2})
    pre, dec = pool_scenario(s, "prefill"), pool_scenario(s, "decode")
    link = KVLink("network", 10e9, 5e-6)
    t, b = kv_transfer_s(pre, dec, 1000, link)
    full = 1000 * 80 * 2 * 8 * 128 * 2
    assert b == pytest.approx(full)
    # 2 senders share the bytes; each of the 2 receivers holds half (4 KV heads of 8)
    assert t == pytest.approx(5e-6 + max(full / 2, full / 2) / 10e9)
    link_slow = KVLink("network", 1e9, 5e-6)
    assert kv_transfer_s(pre, dec, 1000, link_slow)[0] > t


def test_mla_latent_arrives_whole_on_every_decode_tp_rank():
    s = pd({"nodes": 2, "tp": 8}, {"nodes": 2, "tp": 16}, nodes=4, model="deepseek-v3")
    pre, dec = pool_scenario(s, "prefill"), pool_scenario(s, "decode")
    link = KVLink("network", 50e9, 0.0)
    t, b = kv_transfer_s(pre, dec, 4096, link)
    assert t == pytest.approx(b / 50e9)  # the receiver's whole latent dominates


def test_link_follows_the_placement():
    one_node = pd({"gpus": 4, "tp": 4}, {"gpus": 4, "tp": 4})
    two_nodes = pd({"nodes": 1, "tp": 8}, {"nodes": 1, "tp": 8}, nodes=2)
    assert kv_link(one_node, _cm(one_node), 4, 4).kind == "nvlink"
    net = kv_link(two_nodes, _cm(two_nodes), 8, 8)
    assert net.kind == "network"
    # 8 NICs of 400 Gb/s over 8 GPUs: 50 GB/s nominal per GPU, times the achieved fraction
    frac = _cm(two_nodes).link_fraction("network")
    assert net.bandwidth_Bps == pytest.approx(50e9 * frac)
    forced = pd({"gpus": 4, "tp": 4}, {"gpus": 4, "tp": 4}, kv_link="network")
    assert kv_link(forced, _cm(forced), 4, 4).kind == "network"


def test_transfers_of_one_replica_queue():
    q = TransferQueue()
    assert q.send(1.0, 0.5) == 1.5
    assert q.send(1.2, 0.5) == 2.0  # waits for the first
    assert q.send(5.0, 0.5) == 5.5
    assert q.busy_s == pytest.approx(1.5)
