"""The scale-out fabric's tiers: which switch layers a NIC-to-NIC flow climbs, and the share of
each layer's uplinks a NIC gets.

Legend: ``n`` a node, ``r`` a rail (NIC index on its node), ``_Bps`` bytes/s per direction.

A fat tree of leaves (``leaf_nodes`` nodes each), spines (a pod of ``pod_nodes`` nodes) and a
core (``cluster.fabric``). A flow turns around at the lowest switch both ends hang from:

- the same leaf: rail-optimized, the same leaf group *and* the same rail (a leaf serves one
  rail, DGX SuperPOD's layout); top-of-rack, the same leaf group (every NIC of a node on it);
- else the same pod: up to the spines, paying the leaf's oversubscription;
- else: up to the core, paying the leaf's and the spine's.

Why per NIC: a tier's uplinks are shared by every NIC beneath it, and moesim simulates one
group of each kind while, in SPMD training, every group of that kind runs the same collective
at the same time (every EP group dispatches together, every DP group all-reduces together). The
fair share of the uplinks that each NIC then gets is its bandwidth over the product of the
oversubscriptions it climbs through (a leaf with oversubscription o carries 1/o of what its
NICs can send). Each NIC therefore gets its own uplink link per tier at that share, so max-min
sharing sees the real bottleneck: an EP group that spans pods is capped at
nic / (leaf_os · pod_os), one inside a leaf at the NIC's own rate. (A group alone on an idle
fabric would see more; in a training step it never is alone.) Equal-cost multipath is taken as
perfect: the tier's uplinks act as one pooled link.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.specs.hardware import FabricSpec

#: switch tiers a flow can climb to, in order
LEVELS = ("leaf", "spine", "core")


@dataclass(frozen=True)
class Tiers:
    rail_optimized: bool
    leaf_nodes: int
    pod_nodes: int
    leaf_oversubscription: float
    pod_oversubscription: float
    #: shifting every node by this many keeps every flow's tiers (pods hold whole leaves; a
    #: tier left unset spans the cluster and never splits a group)
    period_nodes: int = 1

    @classmethod
    def of(cls, spec: FabricSpec, nodes: int) -> Tiers:
        leaf = spec.leaf_nodes or nodes
        pod = spec.pod_nodes or max(nodes, leaf)
        period = spec.pod_nodes or spec.leaf_nodes or 1
        return cls(
            spec.kind == "rail_optimized",
            leaf,
            pod,
            spec.leaf_oversubscription,
            spec.pod_oversubscription,
            period,
        )

    def level(self, ns: int, rs: int, nd: int, rd: int) -> int:
        """0: the flow turns at a leaf, 1: at a spine, 2: at the core."""
        if ns // self.pod_nodes != nd // self.pod_nodes:
            return 2
        same_leaf = ns // self.leaf_nodes == nd // self.leaf_nodes
        if same_leaf and (rs == rd or not self.rail_optimized):
            return 0
        return 1

    def share(self, level: int) -> float:
        """Oversubscription a NIC's traffic sees when it climbs to ``level``."""
        if level == 0:
            return 1.0
        if level == 1:
            return self.leaf_oversubscription
        return self.leaf_oversubscription * self.pod_oversubscription

    def uplinks(
        self, ns: int, rs: int, nd: int, rd: int
    ) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The per-NIC share links a flow from NIC (ns, rs) to NIC (nd, rd) crosses, as
        (name, oversubscription) on the way up and on the way down; links with no
        oversubscription are left out (the NIC itself is the tighter limit)."""
        up: list[tuple[str, float]] = []
        down: list[tuple[str, float]] = []
        lvl = self.level(ns, rs, nd, rd)
        for tier in range(1, lvl + 1):
            factor = self.share(tier)
            if factor > 1.0:
                name = LEVELS[tier]
                up.append((f"{name}_up[{ns},{rs}]", factor))
                down.append((f"{name}_down[{nd},{rd}]", factor))
        return up, down

    def group_level(self, nodes: set[int]) -> int:
        """The highest tier rail-aligned traffic among these nodes climbs to."""
        if len({n // self.pod_nodes for n in nodes}) > 1:
            return 2
        if len({n // self.leaf_nodes for n in nodes}) > 1:
            return 1
        return 0
