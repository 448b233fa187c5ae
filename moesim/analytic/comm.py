"""Communication volumes per GPU: expert all-to-all, TP collectives, DP gradients, PP sends,
context-parallel K/V exchange.

Conventions: sizes are bytes per GPU per operation. Ring collectives over n ranks move
(n−1)/n of the buffer per GPU for reduce-scatter and all-gather and 2(n−1)/n for all-reduce
(Patarasuk & Yuan 2009; the NCCL tests' "bus bandwidth" convention).

Expert-parallel placement follows Megatron-Core's rank order (tp, cp, ep, dp, pp from the
fastest-varying): an EP group of ``ep`` ranks (each ``etp`` wide) packs into as few nodes as
possible. Tokens choose experts uniformly in expectation (imbalance is the simulator's job).
Node-limited routing (DeepSeek-V3 §2.1.2): a token first picks ``topk_groups`` of ``n_groups``
expert groups, then its top-k experts inside them, so it reaches fewer nodes; hierarchical
dispatch (DeepEP) sends a token once per destination node over RDMA and fans it out over NVLink.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moesim.specs import ClusterSpec, ModelSpec, ParallelSpec, Precision


def ring_reduce_scatter_bytes(buffer_bytes: float, n: int) -> float:
    return buffer_bytes * (n - 1) / n if n > 1 else 0.0


def ring_all_gather_bytes(buffer_bytes: float, n: int) -> float:
    return ring_reduce_scatter_bytes(buffer_bytes, n)


def ring_all_reduce_bytes(buffer_bytes: float, n: int) -> float:
    return 2.0 * ring_reduce_scatter_bytes(buffer_bytes, n)


def _log_comb(n: float, k: float) -> float:
    """log C(n, k) for real n ≥ k ≥ 0 (through lgamma)."""
    if k < 0 or k > n:
        return -math.inf
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def expected_distinct_bins(items: float, bins: int, per_bin: float, draws: float) -> float:
    """Expected number of bins hit when ``draws`` items are drawn without replacement from
    ``bins`` bins of ``per_bin`` items each:
    bins · (1 − C(items − per_bin, draws) / C(items, draws))."""
    if draws <= 0 or bins <= 0:
        return 0.0
    if draws > items - per_bin:
        return float(bins)
    miss = math.exp(_log_comb(items - per_bin, draws) - _log_comb(items, draws))
    return bins * (1.0 - miss)


@dataclass(frozen=True)
class EPPlacement:
    """How one expert-parallel group sits on the cluster."""

    ep: int
    nodes: int  # nodes the group spans
    ranks_per_node: int  # EP ranks of the group on each of those nodes


def ep_placement(p: ParallelSpec, cluster: ClusterSpec) -> EPPlacement:
    gpn = cluster.domain_gpus  # a "node" here is an NVLink domain: what NVLink reaches
    span = p.ep * p.etp
    if span <= gpn:
        return EPPlacement(p.ep, 1, p.ep)
    nodes = math.ceil(span / gpn)
    return EPPlacement(p.ep, nodes, p.ep // nodes)


def expected_nodes_per_token(m: ModelSpec, place: EPPlacement) -> float:
    """Distinct nodes of the EP group one token's top-k experts live on, under the model's
    group-limited routing (``moesim.analytic.dispatch.expected_bins_per_token``)."""
    from moesim.analytic.dispatch import expected_bins_per_token  # it imports this module

    assert m.moe is not None
    return expected_bins_per_token(m.moe, place.nodes)


@dataclass(frozen=True)
class AllToAllVolume:
    """Bytes one GPU sends in one dispatch (or combine) of one MoE layer."""

    intra_node_bytes: float  # to other GPUs of its node (NVLink)
    inter_node_bytes: float  # to other nodes (RDMA)
    local_bytes: float  # to experts on itself (no link)

    @property
    def sent_bytes(self) -> float:
        return self.intra_node_bytes + self.inter_node_bytes


def all_to_all_volume(
    m: ModelSpec,
    p: ParallelSpec,
    cluster: ClusterSpec,
    tokens: float,
    bytes_per_element: float,
    hierarchical: bool = False,
) -> AllToAllVolume:
    """Bytes one GPU sends to dispatch ``tokens`` (its tokens entering the layer).

    Direct: every (token, expert) copy goes straight to the expert's GPU. Hierarchical: one copy
    per (token, destination node) crosses RDMA (to the GPU of the same local rank, rail-aligned)
    and is then forwarded over NVLink to the experts' GPUs in that node (counted here as the
    intra-node part, which the receiving node's GPUs send on this GPU's behalf).
    """
    token_bytes = m.d_model * bytes_per_element
    if m.moe is None or p.ep == 1:  # every expert is local: its copies move no link
        return AllToAllVolume(0.0, 0.0, tokens * (m.moe.top_k if m.moe else 0) * token_bytes)
    place = ep_placement(p, cluster)
    copies = tokens * m.moe.top_k
    local_frac = 1.0 / p.ep
    same_node_frac = place.ranks_per_node / p.ep
    local = copies * local_frac * token_bytes
    intra = copies * (same_node_frac - local_frac) * token_bytes
    inter = copies * (1.0 - same_node_frac) * token_bytes
    if hierarchical and place.nodes > 1:
        remote_nodes = expected_nodes_per_token(m, place) * (place.nodes - 1) / place.nodes
        inter_dedup = tokens * remote_nodes * token_bytes
        # the remote copies beyond one per node are fanned out over NVLink at the far side
        intra += inter - inter_dedup
        inter = inter_dedup
    return AllToAllVolume(intra, inter, local)


def tp_collective_bytes(m: ModelSpec, p: ParallelSpec, tokens: float, act_bytes: float) -> float:
    """Bytes per GPU of the TP collectives of one transformer layer's forward pass.

    Megatron with sequence parallelism: an all-gather before and a reduce-scatter after each of
    attention and the FFN, on the full (tokens × d) tensor; without SP, two all-reduces (same
    volume). The backward pass mirrors it.
    """
    if p.tp == 1:
        return 0.0
    buffer = tokens * m.d_model * act_bytes
    return 2 * (ring_all_gather_bytes(buffer, p.tp) + ring_reduce_scatter_bytes(buffer, p.tp))


@dataclass(frozen=True)
class GradientSync:
    """Gradient bytes one GPU reduces per step, by group (dense part vs routed experts)."""

    non_expert_bytes: float  # over the dp·cp group
    expert_bytes: float  # over the expert-data-parallel group
    dp_group: int
    edp_group: int
    reduce_scatter: bool  # ZeRO ≥ 1 (distributed optimizer) vs plain all-reduce

    def wire_bytes(self) -> float:
        """Bytes one GPU puts on the wire (ring), including the parameter all-gather that
        follows a reduce-scatter under a distributed optimizer."""
        rs = ring_reduce_scatter_bytes
        if self.reduce_scatter:
            return 2 * (
                rs(self.non_expert_bytes, self.dp_group) + rs(self.expert_bytes, self.edp_group)
            )
        return ring_all_reduce_bytes(self.non_expert_bytes, self.dp_group) + ring_all_reduce_bytes(
            self.expert_bytes, self.edp_group
        )


def gradient_sync(
    non_expert_params: float, expert_params: float, p: ParallelSpec, prec: Precision
) -> GradientSync:
    """Per-GPU gradient reduction of one pipeline stage's parameters (already tp/ep-sharded)."""
    return GradientSync(
        non_expert_bytes=non_expert_params * prec.grad_bytes,
        expert_bytes=expert_params * prec.grad_bytes,
        dp_group=p.dp_size * p.cp,
        edp_group=p.edp if expert_params else 1,
        reduce_scatter=p.zero_stage >= 1,
    )


def pp_send_bytes(m: ModelSpec, p: ParallelSpec, seq_len: int, act_bytes: float) -> float:
    """Bytes one GPU sends to the next stage per microbatch (forward; backward sends the same
    size of gradient back). With sequence parallelism each TP rank sends its shard."""
    if p.pp == 1:
        return 0.0
    tokens = p.microbatch_size * seq_len / p.cp
    shard = p.tp if p.sequence_parallel else 1
    return tokens * m.d_model * act_bytes / shard


def cp_kv_bytes_per_token(m: ModelSpec, p: ParallelSpec, act_bytes: float) -> float:
    """Bytes of K and V per token that one attention rank holds and ring attention exchanges.

    MHA/GQA: 2 (K and V) × kv_dim over tp; when tp exceeds the KV heads each rank keeps one
    replicated head (as the KV cache does). MLA exchanges K and V after the up-projection, not
    the cached latent: per head the key's qk_nope + qk_rope dims and the value's v_head_dim
    (Megatron-Core runs MLA's core attention on full heads), heads split over tp.
    """
    if m.mla is not None:
        a = m.mla
        k_plus_v = a.qk_nope_head_dim + a.qk_rope_head_dim + a.v_head_dim  # per head
        return m.n_heads / p.tp * k_plus_v * act_bytes
    return 2 * m.kv_dim / min(p.tp, m.kv_heads) * act_bytes


def cp_kv_bytes(m: ModelSpec, p: ParallelSpec, seq_len: int, act_bytes: float) -> float:
    """Bytes of the K/V chunk one rank holds, per layer and microbatch, under context parallelism.

    Ring attention (Liu et al. 2023, "Ring Attention with Blockwise Transformers"; Megatron-Core
    context parallelism, Transformer Engine's P2P ring): each of the cp ranks holds seq_len/cp
    tokens of every sequence and passes its K/V chunk around the ring, overlapped with the
    attention of the chunk it already has. The forward receives the other cp−1 chunks (the
    traffic of an all-gather of a cp·chunk buffer); the backward receives K/V again and sends
    dK/dV around (an all-gather plus a reduce-scatter of the same buffer). 0 at cp = 1.
    """
    if p.cp == 1:
        return 0.0
    tokens = p.microbatch_size * seq_len / p.cp
    return tokens * cp_kv_bytes_per_token(m, p, act_bytes)
