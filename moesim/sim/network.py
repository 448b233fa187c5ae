"""Links between GPUs and flows that share them by max-min fairness.

Legend: ``g`` a global GPU index (node-major: g = node · gpus_per_node + local), ``_Bps`` bytes
per second per direction, ``_s`` seconds.

Links (each one direction, one capacity):

- ``nvl_up[g]`` / ``nvl_down[g]``: GPU g's port into / out of the node's NVSwitch
  (``intra_node.bandwidth_GBps`` per direction: H100 450 GB/s = NVLink4 900 GB/s bidirectional).
- ``nic_up[node, rail]`` / ``nic_down[node, rail]``: the node's NICs on a rail-optimised fabric,
  GPU i using NIC ``i · nics_per_node // gpus_per_node`` (DGX H100: GPU i ↔ NIC i).
- ``spine_up[node]`` / ``spine_down[node]``: the leaf-to-spine uplinks, present only when
  ``spine_oversubscription`` > 1, with capacity (node NIC bandwidth / oversubscription). Every
  inter-node flow crosses them then (a simplification: rail-local traffic that a leaf switch
  could turn around is charged to the spine too).

Routes: inside a node, NVSwitch (up, down). Between nodes on the same rail, NIC to NIC. Between
nodes on different rails, PXN (NCCL ≥ 2.12): NVLink to the GPU of the destination's rail on the
source node, then that rail's NIC, so traffic stays on its rail.

``simulate_flows`` is a fluid simulation: flows start at given times, rates are the max-min fair
allocation (progressive filling) recomputed whenever a flow starts or finishes, and a flow
completes when its bytes are sent plus its route's latency (one latency per hop kind crossed).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from moesim.specs import ClusterSpec

Route = tuple[int, ...]


@dataclass(frozen=True)
class Flow:
    src: int
    dst: int
    bytes: float
    start_s: float = 0.0


class Topology:
    """The links of a cluster and the route between any two GPUs."""

    def __init__(
        self,
        nodes: int,
        gpus_per_node: int,
        nvlink_Bps: float,
        nic_Bps: float,
        nics_per_node: int,
        intra_latency_s: float,
        inter_latency_s: float,
        spine_oversubscription: float = 1.0,
    ):
        self.nodes = nodes
        self.gpus_per_node = gpus_per_node
        self.nics_per_node = nics_per_node
        self.nvlink_Bps = nvlink_Bps
        self.nic_Bps = nic_Bps
        self.intra_latency_s = intra_latency_s
        self.inter_latency_s = inter_latency_s
        self.spine_oversubscription = spine_oversubscription
        gpus = nodes * gpus_per_node
        self.capacity_Bps: list[float] = []
        self.names: list[str] = []
        self._nvl_up = [self._add(f"nvl_up[{g}]", nvlink_Bps) for g in range(gpus)]
        self._nvl_down = [self._add(f"nvl_down[{g}]", nvlink_Bps) for g in range(gpus)]
        self._nic_up = [
            [self._add(f"nic_up[{n},{r}]", nic_Bps) for r in range(nics_per_node)]
            for n in range(nodes)
        ]
        self._nic_down = [
            [self._add(f"nic_down[{n},{r}]", nic_Bps) for r in range(nics_per_node)]
            for n in range(nodes)
        ]
        self._spine_up: list[int] = []
        self._spine_down: list[int] = []
        if spine_oversubscription > 1.0:
            spine_Bps = nics_per_node * nic_Bps / spine_oversubscription
            self._spine_up = [self._add(f"spine_up[{n}]", spine_Bps) for n in range(nodes)]
            self._spine_down = [self._add(f"spine_down[{n}]", spine_Bps) for n in range(nodes)]
        self._routes: dict[tuple[int, int], tuple[Route, float]] = {}

    @classmethod
    def from_cluster(
        cls, cluster: ClusterSpec, nvlink_fraction: float = 1.0, network_fraction: float = 1.0
    ) -> Topology:
        """Links at the cluster's nominal bandwidth times the achieved fractions (profile)."""
        intra, inter = cluster.intra, cluster.inter
        return cls(
            nodes=cluster.nodes,
            gpus_per_node=cluster.gpus_per_node or 1,
            nvlink_Bps=intra.bandwidth_GBps * 1e9 * nvlink_fraction,
            nic_Bps=inter.nic_Gbps / 8.0 * 1e9 * network_fraction,
            nics_per_node=inter.nics_per_node,
            intra_latency_s=intra.latency_us * 1e-6,
            inter_latency_s=inter.latency_us * 1e-6,
            spine_oversubscription=inter.spine_oversubscription,
        )

    def _add(self, name: str, capacity_Bps: float) -> int:
        self.names.append(name)
        self.capacity_Bps.append(capacity_Bps)
        return len(self.names) - 1

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def node_of(self, g: int) -> int:
        return g // self.gpus_per_node

    def local_of(self, g: int) -> int:
        return g % self.gpus_per_node

    def rail_of(self, g: int) -> int:
        return self.local_of(g) * self.nics_per_node // self.gpus_per_node

    def route(self, src: int, dst: int) -> tuple[Route, float]:
        """Links a flow from ``src`` to ``dst`` crosses, and its latency in seconds."""
        key = (src, dst)
        hit = self._routes.get(key)
        if hit is None:
            hit = self._route(src, dst)
            self._routes[key] = hit
        return hit

    def _route(self, src: int, dst: int) -> tuple[Route, float]:
        if src == dst:
            return (), 0.0
        ns, nd = self.node_of(src), self.node_of(dst)
        if ns == nd:
            return (self._nvl_up[src], self._nvl_down[dst]), self.intra_latency_s
        links: list[int] = []
        latency_s = self.inter_latency_s
        rail = self.rail_of(dst)
        if self.rail_of(src) != rail:  # PXN: hop to the destination rail's GPU on this node
            proxy = ns * self.gpus_per_node + self.local_of(dst)
            links += [self._nvl_up[src], self._nvl_down[proxy]]
            latency_s += self.intra_latency_s
        links.append(self._nic_up[ns][rail])
        if self._spine_up:
            links += [self._spine_up[ns], self._spine_down[nd]]
        links.append(self._nic_down[nd][rail])
        return tuple(links), latency_s


def max_min_rates(routes: list[Route], capacity_Bps: list[float]) -> list[float]:
    """Max-min fair rates by progressive filling: raise every flow's rate together; when a link
    fills, freeze the flows crossing it at their fair share; repeat with the rest.

    Links that fill at the same share (within 1e-9 relative) are frozen in one round, so a
    symmetric pattern costs one round however many flows it has.
    """
    n = len(routes)
    rate = [0.0] * n
    users: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(routes):
        for link in r:
            users[link].append(i)
    cap_left = {link: capacity_Bps[link] for link in users}
    count = {link: len(u) for link, u in users.items()}
    fixed = [not r for r in routes]  # a flow without links (src == dst) is not rate-limited
    for i, r in enumerate(routes):
        if not r:
            rate[i] = float("inf")
    left = n - sum(fixed)
    while left:
        shares = {link: cap_left[link] / c for link, c in count.items() if c > 0}
        share = min(shares.values())
        tol = share * 1e-9
        for link, s in shares.items():
            if s > share + tol:
                continue
            for i in users[link]:
                if fixed[i]:
                    continue
                fixed[i] = True
                rate[i] = share
                left -= 1
                for other in routes[i]:
                    cap_left[other] -= share
                    count[other] -= 1
    return rate


@dataclass(frozen=True)
class FlowResult:
    finish_s: list[float]  # per flow: when its last byte arrived (latency included)

    @property
    def makespan_s(self) -> float:
        return max(self.finish_s, default=0.0)


# A flow of less than this carries nothing: rates near 1e10 B/s would make its time underflow
# to zero, and a flow that never drains would stall the simulation.
NEGLIGIBLE_BYTES = 1e-6


def simulate_flows(topology: Topology, flows: list[Flow]) -> FlowResult:
    """Fluid simulation of ``flows``: rates re-shared (max-min) at every start and finish."""
    order = sorted(range(len(flows)), key=lambda i: flows[i].start_s)
    finish = [0.0] * len(flows)
    remaining = [f.bytes for f in flows]
    routes = [topology.route(f.src, f.dst) for f in flows]
    active: list[int] = []
    nxt = 0
    t = 0.0
    while nxt < len(order) or active:
        if not active:
            t = max(t, flows[order[nxt]].start_s)
        while nxt < len(order) and flows[order[nxt]].start_s <= t:
            i = order[nxt]
            nxt += 1
            if remaining[i] <= NEGLIGIBLE_BYTES or not routes[i][0]:
                finish[i] = t + (routes[i][1] if remaining[i] > NEGLIGIBLE_BYTES else 0.0)
            else:
                active.append(i)
        if not active:
            continue
        rates = max_min_rates([routes[i][0] for i in active], topology.capacity_Bps)
        dt = min(remaining[i] / r for i, r in zip(active, rates, strict=True))
        if nxt < len(order):
            dt = min(dt, flows[order[nxt]].start_s - t)
        t += dt
        still = []
        for i, r in zip(active, rates, strict=True):
            remaining[i] -= r * dt
            if remaining[i] <= max(flows[i].bytes * 1e-9, NEGLIGIBLE_BYTES):
                finish[i] = t + routes[i][1]
            else:
                still.append(i)
        active = still
    return FlowResult(finish)
