"""Collectives as sets of flows on the topology, timed by the flow simulation or by the
closed-form alpha–beta bound.

Legend: ``group`` a tuple of global GPU ids, ``n`` its size, ``S`` bytes per rank (the full
buffer: the input of a reduce-scatter, the output of an all-gather), ``C`` ring channels.

A collective is a list of phases run one after another; a phase is a set of flows that run
concurrently and is repeated ``repeat`` times (the n−1 identical steps of a ring).

- Ring (NCCL): one channel per group GPU on a node, each channel's ring rotated so that it leaves
  every node through a different rail; each step a GPU sends S/(n·C) per channel to its
  successor. Reduce-scatter and all-gather take n−1 steps, all-reduce 2(n−1).
- Tree all-reduce: a chain inside each node and a double binary tree across nodes (NCCL ≥ 2.4),
  pipelined, so every edge is busy at once; reduce then broadcast, each paying the depth in
  latency. On one node the tree is a ring (what NCCL picks there).
- All-to-all direct: one flow per (source, destination) pair.
- All-to-all hierarchical (DeepEP internode): a token is sent once per destination node over
  RDMA to the source's rail peer on that node, then forwarded over NVLink to the GPUs that need
  it; intra-node pairs go straight over NVLink. The two legs are chunked and pipelined in
  DeepEP, so they run concurrently here. Combine is the same traffic reversed (NVLink gather and
  reduce on the expert node, then RDMA back).

All-reduce, all-gather and reduce-scatter as NCCL runs them (``collective_timing.nccl_time_s``):
NCCL picks the (algorithm, protocol) of least predicted time from its own tuning model
(``nccl_tuning``: LL / LL128 / Simple, ring / tree / NVLS / NVLS-tree / PAT) and that model's
time is the collective's, with the graph bandwidths read off this topology's links (per-GPU
NVLink; the NICs of the group's rails across nodes). The ring and tree builders below stay for
tests and for the link-level view of the traffic; the simulator times these three collectives
with NCCL's model in both network modes.

Two timings (all-to-all, point-to-point, and the builders; ``moesim.sim.collective_timing``):

- ``flow``: max-min fair fluid simulation (``network.simulate_flows``) of each phase.
- ``alpha_beta``: per phase, α = the largest route latency, β-term = the largest link load over
  its capacity. This is the textbook closed form (for a ring all-reduce on n GPUs of bandwidth B:
  2(n−1)·(α + S/(n·B))). Its bandwidth term is a lower bound of the flow time (a link can carry
  no more than its capacity), reached when the pattern is symmetric; it charges the largest
  latency to every phase, so it can exceed the flow time by less than one latency.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from moesim.sim.network import Topology

NetworkMode = Literal["flow", "analytic"]
FlowSpec = tuple[int, int, float]  # (src, dst, bytes)


@dataclass(frozen=True)
class Phase:
    flows: tuple[FlowSpec, ...]
    repeat: int = 1
    extra_latency_s: float = 0.0  # hops beyond one route latency (tree depth)


@dataclass(frozen=True)
class Collective:
    kind: str
    group: tuple[int, ...]
    phases: tuple[Phase, ...] = field(default_factory=tuple)

    def bytes_sent(self) -> dict[int, float]:
        """Bytes each GPU puts on links (self-sends excluded), over all phases and repeats."""
        out: dict[int, float] = defaultdict(float)
        for p in self.phases:
            for s, d, b in p.flows:
                if s != d:
                    out[s] += b * p.repeat
        return dict(out)

    def bytes_received(self) -> dict[int, float]:
        out: dict[int, float] = defaultdict(float)
        for p in self.phases:
            for s, d, b in p.flows:
                if s != d:
                    out[d] += b * p.repeat
        return dict(out)


# -- builders ------------------------------------------------------------------------------------
def _by_node(topo: Topology, group: tuple[int, ...]) -> list[list[int]]:
    nodes: dict[int, list[int]] = defaultdict(list)
    for g in sorted(group):
        nodes[topo.domain_of(g)].append(g)
    return [nodes[k] for k in sorted(nodes)]


def ring_channels(topo: Topology, group: tuple[int, ...]) -> list[list[int]]:
    """Ring orders, one per channel. Channel c visits every node's GPUs starting from the c-th,
    so it leaves each node from a different GPU (and rail)."""
    per_node = _by_node(topo, group)
    sizes = {len(m) for m in per_node}
    if len(per_node) == 1 or len(sizes) != 1:
        return [sorted(group)]
    c_count = sizes.pop()
    return [
        [m[(c + j) % c_count] for m in per_node for j in range(c_count)] for c in range(c_count)
    ]


def _ring_phase(topo: Topology, group: tuple[int, ...], step_bytes: float, repeat: int) -> Phase:
    channels = ring_channels(topo, group)
    per_channel = step_bytes / len(channels)
    flows = tuple(
        (ring[i], ring[(i + 1) % len(ring)], per_channel)
        for ring in channels
        for i in range(len(ring))
    )
    return Phase(flows, repeat=repeat)


def reduce_scatter(topo: Topology, group: tuple[int, ...], bytes_per_rank: float) -> Collective:
    n = len(group)
    if n <= 1 or bytes_per_rank <= 0:
        return Collective("reduce_scatter", group)
    return Collective(
        "reduce_scatter", group, (_ring_phase(topo, group, bytes_per_rank / n, n - 1),)
    )


def all_gather(topo: Topology, group: tuple[int, ...], bytes_per_rank: float) -> Collective:
    n = len(group)
    if n <= 1 or bytes_per_rank <= 0:
        return Collective("all_gather", group)
    return Collective("all_gather", group, (_ring_phase(topo, group, bytes_per_rank / n, n - 1),))


def ring_all_reduce(topo: Topology, group: tuple[int, ...], bytes_per_rank: float) -> Collective:
    n = len(group)
    if n <= 1 or bytes_per_rank <= 0:
        return Collective("all_reduce", group)
    phase = _ring_phase(topo, group, bytes_per_rank / n, 2 * (n - 1))
    return Collective("all_reduce", group, (phase,))


def tree_all_reduce(topo: Topology, group: tuple[int, ...], bytes_per_rank: float) -> Collective:
    per_node = _by_node(topo, group)
    if len(per_node) == 1 or len({len(m) for m in per_node}) != 1:
        return ring_all_reduce(topo, group, bytes_per_rank)
    if bytes_per_rank <= 0:
        return Collective("all_reduce", group)
    c_count, n_nodes = len(per_node[0]), len(per_node)
    per_channel = bytes_per_rank / c_count
    up: list[FlowSpec] = []
    for c in range(c_count):
        # intra-node chain ending at the channel's leader m[c]
        for m in per_node:
            chain = [m[(c + 1 + j) % c_count] for j in range(c_count)]
            up += [(chain[j], chain[j + 1], per_channel) for j in range(c_count - 1)]
        # double binary tree over the node leaders: half the data on each tree, the second
        # tree numbered in reverse so a node that is inner in one is a leaf in the other
        for order in (range(n_nodes), range(n_nodes - 1, -1, -1)):
            idx = list(order)
            for k in range(1, n_nodes):
                child, parent = per_node[idx[k]][c], per_node[idx[(k - 1) // 2]][c]
                up.append((child, parent, per_channel / 2))
    depth = max(1, (n_nodes - 1).bit_length())
    extra = (c_count - 1) * topo.intra_latency_s + (depth - 1) * topo.inter_latency_s
    down = tuple((d, s, b) for s, d, b in up)
    return Collective(
        "all_reduce",
        group,
        (Phase(tuple(up), extra_latency_s=extra), Phase(down, extra_latency_s=extra)),
    )


def all_to_all_direct(
    group: tuple[int, ...], bytes_sd: list[list[float]], kind: str = "all_to_all"
) -> Collective:
    """``bytes_sd[i][j]``: bytes group member i sends to member j."""
    flows = tuple(
        (s, d, bytes_sd[i][j])
        for i, s in enumerate(group)
        for j, d in enumerate(group)
        if i != j and bytes_sd[i][j] > 0
    )
    return Collective(kind, group, (Phase(flows),) if flows else ())


def _relay(topo: Topology, members_on: dict[int, dict[int, int]], src: int, node: int) -> int:
    """The GPU of ``node`` (an NVLink domain) that receives ``src``'s RDMA traffic: its rail
    peer (same index in the domain) when that GPU is in the group, else the member at src's
    position among its own domain's members (cyclically), so that senders without a peer
    spread over the receivers' NICs instead of all landing on one (a group that straddles a
    domain boundary has such senders)."""
    peers = members_on[node]
    hit = peers.get(topo.slot_of(src))
    if hit is not None:
        return hit
    own = sorted(members_on[topo.domain_of(src)])
    receivers = sorted(peers)
    return peers[receivers[own.index(topo.slot_of(src)) % len(receivers)]]


def _members_on(topo: Topology, group: tuple[int, ...]) -> dict[int, dict[int, int]]:
    members_on: dict[int, dict[int, int]] = defaultdict(dict)  # domain -> slot -> gpu
    for g in group:
        members_on[topo.domain_of(g)][topo.slot_of(g)] = g
    return members_on


def all_to_all_hierarchical(
    topo: Topology,
    group: tuple[int, ...],
    bytes_sd: list[list[float]],
    rdma_bytes_sn: list[dict[int, float]],
    kind: str = "all_to_all",
) -> Collective:
    """DeepEP-style dispatch. ``bytes_sd[i][j]``: bytes member i's tokens need on member j
    (deduplicated per GPU); ``rdma_bytes_sn[i][node]``: bytes member i sends over RDMA to a
    remote ``node`` (deduplicated per node)."""
    members_on = _members_on(topo, group)
    flows: list[FlowSpec] = []
    for i, s in enumerate(group):
        ns = topo.domain_of(s)
        for j, d in enumerate(group):
            if i != j and topo.domain_of(d) == ns and bytes_sd[i][j] > 0:
                flows.append((s, d, bytes_sd[i][j]))
        for node, b in rdma_bytes_sn[i].items():
            if node == ns or b <= 0:
                continue
            relay = _relay(topo, members_on, s, node)
            flows.append((s, relay, b))
            for j, d in enumerate(group):
                if topo.domain_of(d) == node and d != relay and bytes_sd[i][j] > 0:
                    flows.append((relay, d, bytes_sd[i][j]))
    phase = Phase(tuple(flows), extra_latency_s=topo.intra_latency_s)
    return Collective(kind, group, (phase,) if flows else ())


def all_to_all_unit_link_loads(
    topo: Topology,
    group: tuple[int, ...],
    hierarchical: bool,
    gpu_bytes: float,
    node_bytes: float,
    reverse: bool = False,
) -> tuple[list[int], list[list[float]]]:
    """Link loads of an all-to-all per unit of destination load: row j holds the bytes on each
    link when every member sends 1/n of one copy to member j (``gpu_bytes`` per copy on the
    GPU legs, ``node_bytes`` on the RDMA leg), the same legs the builders above lay down
    (``reverse``: combine, the traffic reversed). Every builder is linear in its byte matrix,
    so destination loads L put L @ rows bytes on the links. Returns (links, rows)."""
    n = len(group)
    members_on = _members_on(topo, group)
    rows: list[dict[int, float]] = [defaultdict(float) for _ in range(n)]

    def leg(j: int, a: int, b: int, nbytes: float) -> None:
        for link in topo.route(b, a)[0] if reverse else topo.route(a, b)[0]:
            rows[j][link] += nbytes

    for i, s in enumerate(group):
        ns = topo.domain_of(s)
        for j, d in enumerate(group):
            if i == j:
                continue
            if not hierarchical or topo.domain_of(d) == ns:
                leg(j, s, d, gpu_bytes / n)
                continue
            relay = _relay(topo, members_on, s, topo.domain_of(d))
            leg(j, s, relay, node_bytes / n)
            if d != relay:
                leg(j, relay, d, gpu_bytes / n)
    links = sorted({link for r in rows for link in r})
    return links, [[r.get(link, 0.0) for link in links] for r in rows]


def all_to_all_pair_link_loads(
    topo: Topology,
    group: tuple[int, ...],
    hierarchical: bool,
    gpu_bytes: float,
    node_bytes: float,
    reverse: bool = False,
) -> list[tuple[int, int, int, float]]:
    """Link loads of an all-to-all per copy that member i routes to member j, as legs
    ``(i, j, link, bytes)``: the legs the builders above lay down (``gpu_bytes`` per copy on
    the GPU legs, ``node_bytes`` on the RDMA leg; ``reverse``: combine). A builder is linear
    in its byte matrix, so a copy matrix C puts Σ C[i, j] · bytes of the (i, j) legs on each
    link: any pattern's link loads without building its flows (full fidelity's draws)."""
    members_on = _members_on(topo, group)
    legs: list[tuple[int, int, int, float]] = []

    def leg(i: int, j: int, a: int, b: int, nbytes: float) -> None:
        for link in topo.route(b, a)[0] if reverse else topo.route(a, b)[0]:
            legs.append((i, j, link, nbytes))

    for i, s in enumerate(group):
        ns = topo.node_of(s)
        for j, d in enumerate(group):
            if i == j:
                continue
            if not hierarchical or topo.node_of(d) == ns:
                leg(i, j, s, d, gpu_bytes)
                continue
            relay = _relay(topo, members_on, s, topo.node_of(d))
            leg(i, j, s, relay, node_bytes)
            if d != relay:
                leg(i, j, relay, d, gpu_bytes)
    return legs


def reversed_collective(c: Collective, kind: str) -> Collective:
    """The same traffic in the opposite direction (combine after dispatch)."""
    return Collective(
        kind,
        c.group,
        tuple(
            Phase(tuple((d, s, b) for s, d, b in p.flows), p.repeat, p.extra_latency_s)
            for p in c.phases
        ),
    )
