"""Links between GPUs and flows that share them by max-min fairness.

Legend: ``g`` a global GPU index (node-major: g = node · gpus_per_node + local), ``_Bps`` bytes
per second per direction, ``_s`` seconds.

Links (each one direction, one capacity; made on first use, so a cluster of any size costs only
the links its simulated groups touch):

- ``nvl_up[g]`` / ``nvl_down[g]``: GPU g's port into / out of its NVLink domain's switches
  (``intra_node.bandwidth_GBps`` per direction: H100 450 GB/s = NVLink4 900 GB/s bidirectional).
  The domain is ``cluster.nvlink_domain_gpus`` GPUs (default: one node; GB200 NVL72: 72 GPUs
  on 18 nodes), numbered consecutively.
- ``nic_up[node, rail]`` / ``nic_down[node, rail]``: the node's NICs on a rail-optimised fabric,
  GPU i using NIC ``i · nics_per_node // gpus_per_node`` (DGX H100: GPU i ↔ NIC i).
- ``spine_up[node]`` / ``spine_down[node]``: the leaf-to-spine uplinks, present only when
  ``spine_oversubscription`` > 1, with capacity (node NIC bandwidth / oversubscription). Every
  inter-node flow crosses them then (a simplification: rail-local traffic that a leaf switch
  could turn around is charged to the spine too). Only without ``cluster.fabric``.
- With ``cluster.fabric``: per NIC, ``spine_up/down[node,rail]`` and ``core_up/down[node,rail]``
  at the NIC's fair share of that tier's uplinks (``moesim.sim.fabric``), crossed by flows that
  climb to that tier.

Routes: inside an NVLink domain, NVLink (up, down). Between domains, NIC to NIC; on different
rails, PXN (NCCL ≥ 2.12) first: NVLink to the GPU of the destination's rail on the source node
(when it shares the source's domain), then that rail's NIC, so traffic stays on its rail.

``simulate_flows`` is a fluid simulation: flows start at given times, rates are the max-min fair
allocation (progressive filling) recomputed whenever a flow starts or finishes, and a flow
completes when its bytes are sent plus its route's latency (one latency per hop kind crossed).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from moesim.sim.fabric import Tiers
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
        domain_gpus: int | None = None,
        tiers: Tiers | None = None,
    ):
        self.nodes = nodes
        self.gpus_per_node = gpus_per_node
        self.nics_per_node = nics_per_node
        self.nvlink_Bps = nvlink_Bps
        self.nic_Bps = nic_Bps
        self.intra_latency_s = intra_latency_s
        self.inter_latency_s = inter_latency_s
        self.spine_oversubscription = spine_oversubscription
        self.domain_gpus = domain_gpus or gpus_per_node
        self.tiers = tiers
        self.capacity_Bps: list[float] = []
        self.names: list[str] = []
        self._ids: dict[str, int] = {}
        self._spine_Bps = nics_per_node * nic_Bps / max(spine_oversubscription, 1.0)
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
            domain_gpus=cluster.domain_gpus,
            tiers=Tiers.of(cluster.fabric, cluster.nodes) if cluster.fabric else None,
        )

    def _add(self, name: str, capacity_Bps: float) -> int:
        self.names.append(name)
        self.capacity_Bps.append(capacity_Bps)
        return len(self.names) - 1

    def _link(self, name: str, capacity_Bps: float) -> int:
        """The id of link ``name``, made with ``capacity_Bps`` on first use."""
        i = self._ids.get(name)
        if i is None:
            i = self._ids[name] = self._add(name, capacity_Bps)
        return i

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def node_of(self, g: int) -> int:
        return g // self.gpus_per_node

    def local_of(self, g: int) -> int:
        return g % self.gpus_per_node

    def domain_of(self, g: int) -> int:
        """The NVLink domain of GPU g."""
        return g // self.domain_gpus

    def slot_of(self, g: int) -> int:
        """GPU g's index inside its NVLink domain."""
        return g % self.domain_gpus

    def rail_of(self, g: int) -> int:
        return self.local_of(g) * self.nics_per_node // self.gpus_per_node

    @property
    def period_gpus(self) -> int:
        """Shifting every GPU by this many maps the cluster onto itself (domains, leaves and
        pods included): groups that differ by such a shift take the same time."""
        unit = self.gpus_per_node * (self.tiers.period_nodes if self.tiers else 1)
        return math.lcm(unit, self.domain_gpus)

    def route(self, src: int, dst: int) -> tuple[Route, float]:
        """Links a flow from ``src`` to ``dst`` crosses, and its latency in seconds."""
        key = (src, dst)
        hit = self._routes.get(key)
        if hit is None:
            hit = self._route(src, dst)
            self._routes[key] = hit
        return hit

    def _nvl(self, src: int, dst: int) -> list[int]:
        return [
            self._link(f"nvl_up[{src}]", self.nvlink_Bps),
            self._link(f"nvl_down[{dst}]", self.nvlink_Bps),
        ]

    def _route(self, src: int, dst: int) -> tuple[Route, float]:
        if src == dst:
            return (), 0.0
        if self.domain_of(src) == self.domain_of(dst):
            return tuple(self._nvl(src, dst)), self.intra_latency_s
        ns, nd = self.node_of(src), self.node_of(dst)
        links: list[int] = []
        latency_s = self.inter_latency_s
        rail, rail_src = self.rail_of(dst), self.rail_of(src)
        if rail_src != rail:  # PXN: hop to the destination rail's GPU on this node
            proxy = ns * self.gpus_per_node + self.local_of(dst)
            if self.domain_of(proxy) == self.domain_of(src):
                links += self._nvl(src, proxy)
                latency_s += self.intra_latency_s
                rail_src = rail
        links.append(self._link(f"nic_up[{ns},{rail_src}]", self.nic_Bps))
        if self.tiers is not None:
            up, down = self.tiers.uplinks(ns, rail_src, nd, rail)
            links += [self._link(name, self.nic_Bps / f) for name, f in up]
            links += [self._link(name, self.nic_Bps / f) for name, f in down]
        elif self.spine_oversubscription > 1.0:
            links.append(self._link(f"spine_up[{ns}]", self._spine_Bps))
            links.append(self._link(f"spine_down[{nd}]", self._spine_Bps))
        links.append(self._link(f"nic_down[{nd},{rail}]", self.nic_Bps))
        return tuple(links), latency_s

    def group_oversubscription(self, group: tuple[int, ...]) -> float:
        """The oversubscription rail-aligned traffic among ``group``'s NVLink domains pays:
        the legacy spine factor, or the fabric's share at the highest tier it climbs to."""
        if self.tiers is None:
            return max(self.spine_oversubscription, 1.0)
        nodes = {self.node_of(g) for g in group}
        return self.tiers.share(self.tiers.group_level(nodes))


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
