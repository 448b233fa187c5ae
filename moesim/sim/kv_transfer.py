"""The KV cache of a prefilled prompt sent from a prefill replica to a decode replica
(prefill/decode disaggregation, ``workload.disaggregated``).

What moves: the prompt's KV cache of every layer (``precision.kv_cache``): the compressed latent
and RoPE key of MLA, or K and V of every key/value head. Each GPU of the prefill replica sends
its share (its tp·pp slice, over its own link: one NIC per GPU on the rail-optimised clusters
moesim models, or its NVLink port); each GPU of the decode replica receives what it holds of
that sequence (``kv_cache_bytes_per_token`` of the decode layout: an MLA latent is held whole
by every tp rank, so it arrives whole on each). A transfer takes the link latency plus the
slower of the two sides. The transfers of one prefill replica use the same links, so they go
one after another (a FIFO per prefill replica: ``TransferQueue``).

The link: NVLink when both pools sit in one node (the NVLink domain moesim knows), the
inter-node network otherwise (``disaggregated.kv_link`` forces one); its bandwidth is the
GPU's share of the node's NICs (or its NVLink bandwidth) at the calibration profile's achieved
fraction, as every other transfer in moesim.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.analytic.memory import kv_cache_bytes_per_token
from moesim.sim.costmodel import CostModel
from moesim.specs import ParallelSpec, Scenario


@dataclass(frozen=True)
class KVLink:
    """The path a prompt's KV cache takes: per-GPU bandwidth (bytes/s) and latency (s)."""

    kind: str  # "nvlink" | "network"
    bandwidth_Bps: float
    latency_s: float


def kv_link(s: Scenario, cm: CostModel, prefill_gpus: int, decode_gpus: int) -> KVLink:
    """The link between the pools of ``s`` (a disaggregated scenario)."""
    w = s.workload
    forced = w.disaggregated.kv_link  # type: ignore[union-attr]
    c = s.cluster
    one_node = prefill_gpus + decode_gpus <= c.gpus_per_node
    kind = forced if forced != "auto" else ("nvlink" if one_node else "network")
    if kind == "nvlink":
        bw = c.intra.bandwidth_GBps * 1e9 * cm.link_fraction("nvlink")
        return KVLink("nvlink", bw, c.intra.latency_us * 1e-6)
    per_gpu = c.inter.node_bandwidth_GBps * 1e9 / c.gpus_per_node
    return KVLink("network", per_gpu * cm.link_fraction("network"), c.inter.latency_us * 1e-6)


def prompt_kv_bytes(s: Scenario, prompt_len: int) -> float:
    """Bytes of one prompt's whole KV cache (every layer, every head, one copy)."""
    one = ParallelSpec(tp=1, pp=1, dp=1)
    return kv_cache_bytes_per_token(s.model, one, s.precision) * prompt_len


def kv_transfer_s(
    prefill: Scenario, decode: Scenario, prompt_len: int, link: KVLink
) -> tuple[float, float]:
    """(seconds, bytes) of sending one prompt's KV cache from a prefill replica (its tp·pp
    GPUs each send a share) to a decode replica (each GPU receives what it holds)."""
    total_b = prompt_kv_bytes(prefill, prompt_len)
    senders = prefill.parallel.tp * prefill.parallel.pp
    send_s = total_b / senders / link.bandwidth_Bps
    recv_b = kv_cache_bytes_per_token(decode.model, decode.parallel, decode.precision) * prompt_len
    recv_s = recv_b / link.bandwidth_Bps
    return link.latency_s + max(send_s, recv_s), total_b


class TransferQueue:
    """The KV transfers of one prefill replica, one after another on its links."""

    def __init__(self) -> None:
        self.free_at_s = 0.0
        self.busy_s = 0.0

    def send(self, ready_s: float, seconds: float) -> float:
        """When a transfer of ``seconds`` that can start at ``ready_s`` has arrived."""
        start = max(ready_s, self.free_at_s)
        self.free_at_s = start + seconds
        self.busy_s += seconds
        return self.free_at_s
