"""Timing collectives (``moesim.sim.collectives`` builds them): by the max-min fair flow
simulation of each phase (``flow_time_s``), by the alpha–beta closed form
(``alpha_beta_time_s``), or, for all-reduce, all-gather and reduce-scatter, by NCCL's own
tuning model over this topology's links (``nccl_time_s``); ``CollectiveTimer`` picks and caches
per group and size.
"""

from __future__ import annotations

from collections import defaultdict

from moesim.sim.collectives import Collective, NetworkMode, Phase
from moesim.sim.nccl_tuning import ALGORITHMS, Arch, Choice, CollectiveKind, NcclSystem, choose
from moesim.sim.network import Flow, Topology, simulate_flows


# -- timing --------------------------------------------------------------------------------------
def flow_time_s(topo: Topology, c: Collective) -> float:
    total = 0.0
    for p in c.phases:
        flows = [Flow(s, d, b) for s, d, b in p.flows if s != d and b > 0]
        if flows:
            total += p.repeat * (simulate_flows(topo, flows).makespan_s + p.extra_latency_s)
    return total


def phase_link_load(topo: Topology, p: Phase) -> tuple[dict[int, float], float]:
    """Bytes one repeat of ``p`` puts on each link, and its largest route latency."""
    load: dict[int, float] = defaultdict(float)
    alpha_s = 0.0
    for s, d, b in p.flows:
        if s == d or b <= 0:
            continue
        links, lat_s = topo.route(s, d)
        alpha_s = max(alpha_s, lat_s)
        for link in links:
            load[link] += b
    return load, alpha_s


def alpha_beta_time_s(topo: Topology, c: Collective) -> float:
    """Σ phases · repeat · (largest route latency + largest link load / capacity)."""
    total = 0.0
    for p in c.phases:
        load, alpha_s = phase_link_load(topo, p)
        if load:
            beta_s = max(v / topo.capacity_Bps[link] for link, v in load.items())
            total += p.repeat * (alpha_s + beta_s + p.extra_latency_s)
    return total


def ring_all_reduce_textbook_s(
    n: int, bytes_per_rank: float, bw_Bps: float, alpha_s: float
) -> float:
    """2(n−1)·(α + S/(n·B)) (Thakur, Rabenseifner & Gropp 2005; Patarasuk & Yuan 2009)."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) * (alpha_s + bytes_per_rank / (n * bw_Bps))


def nccl_system(topo: Topology, group: tuple[int, ...], arch: Arch, nvls: bool) -> NcclSystem:
    """NCCL's view of ``group`` on ``topo``: its ranks and nodes, and per-GPU graph bandwidths:
    the NVLink port; across nodes, the NICs of the rails the group's GPUs on a node use (ppn ×
    the node's NIC bandwidth per GPU), shared by the oversubscription of the highest switch
    tier the group's traffic climbs to. A "node" here is an NVLink domain: inside it NVLink
    reaches every GPU (NCCL supports GB200 multi-node NVLink from 2.25.2, NVIDIA's GB200 NVL
    Multi-Node Tuning Guide, NCCL section; MSCCL++ generalises its "ranks per node" to "ranks
    per IPC domain" for it, microsoft/mscclpp PR #798), and the NICs join domains."""
    nodes = len({topo.domain_of(g) for g in group})
    n = len(group)
    ppn = n / nodes
    node_nic_Bps = topo.nics_per_node * topo.nic_Bps
    inter_Bps = ppn * node_nic_Bps / topo.gpus_per_node / topo.group_oversubscription(group)
    return NcclSystem(n, nodes, arch, topo.nvlink_Bps / 1e9, inter_Bps / 1e9, nvls)


def nccl_time_s(
    topo: Topology,
    group: tuple[int, ...],
    kind: CollectiveKind,
    nbytes: float,
    arch: Arch,
    nvls: bool,
    algorithms: tuple[str, ...] = ALGORITHMS,
) -> tuple[float, Choice | None]:
    """Time of an all-reduce / all-gather / reduce-scatter of ``nbytes`` (nccl-tests "size")
    over ``group`` as NCCL picks and models it; (0, None) when there is nothing to do."""
    if len(group) <= 1 or nbytes <= 0:
        return 0.0, None
    c = choose(kind, nbytes, nccl_system(topo, group, arch, nvls), algorithms)
    return c.time_us * 1e-6, c


class CollectiveTimer:
    """Times collectives in one mode, memoised by the collective's identity (kind, group, bytes):
    a training step repeats the same few collectives thousands of times. ``arch`` and ``nvls``
    describe the GPUs to NCCL's model (``nccl_s``)."""

    def __init__(
        self,
        topo: Topology,
        mode: NetworkMode = "flow",
        overhead_s: float = 0.0,
        arch: Arch = "hopper",
        nvls: bool = False,
    ):
        self.topo = topo
        self.mode = mode
        self.overhead_s = overhead_s
        self.arch: Arch = arch
        self.nvls = nvls
        self._cache: dict[tuple, float] = {}
        self.choices: dict[tuple, Choice] = {}

    def nccl_s(
        self,
        key: tuple,
        kind: CollectiveKind,
        group: tuple[int, ...],
        nbytes: float,
        algorithms: tuple[str, ...] = ALGORITHMS,
    ) -> float:
        """An all-reduce / all-gather / reduce-scatter timed by NCCL's model (``nccl_time_s``)
        plus the profile's collective overhead; the pick is kept in ``choices[key]``."""
        t = self._cache.get(key)
        if t is None:
            t, c = nccl_time_s(self.topo, group, kind, nbytes, self.arch, self.nvls, algorithms)
            if c is not None:
                self.choices[key] = c
                t += self.overhead_s
            self._cache[key] = t
        return t

    def time_s(self, key: tuple, build) -> float:
        """``build()`` makes the Collective on a cache miss; a collective without flows (degree
        1, or nothing to send) costs 0."""
        t = self._cache.get(key)
        if t is None:
            c = build()
            if not c.phases:
                t = 0.0
            elif self.mode == "flow":
                t = flow_time_s(self.topo, c) + self.overhead_s
            else:
                t = alpha_beta_time_s(self.topo, c) + self.overhead_s
            self._cache[key] = t
        return t

    def spans_nodes(self, group: tuple[int, ...]) -> bool:
        """The group leaves one NVLink domain (its traffic crosses the NICs)."""
        return len({self.topo.domain_of(g) for g in group}) > 1
