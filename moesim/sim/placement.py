"""Where each parallel group lands on the cluster: inside a node, inside an NVLink domain, or
across domains, leaves or pods (the result's ``placement``).

A group's span decides which links its collectives use: NVLink inside a domain, the NICs and
the switch tiers across. ``parallel.order`` and the cluster's shape decide the spans; groups of
one kind can differ (an EP group of 16 in domains of 72 GPUs: four fit, the fifth straddles two
domains), so each kind reports its worst group.
"""

from __future__ import annotations

from moesim.sim.grid import Grid
from moesim.sim.network import Topology

#: spans from the narrowest to the widest
SPANS = (
    "intra-node",
    "intra-domain",
    "crosses domains",
    "crosses leaves",
    "crosses pods",
)
#: groups looked at per kind: a prefix of the ranks this long (the layout repeats with a
#: period far below it), so the report costs the same on 8 GPUs and on a billion
PLACEMENT_SCAN_GPUS = 4096


def _rank(span: str) -> int:
    return SPANS.index("crosses domains" if span == "crosses nodes" else span)


def group_span(topo: Topology, group: tuple[int, ...]) -> str:
    """The widest boundary ``group`` crosses."""
    if len({topo.node_of(g) for g in group}) == 1:
        return SPANS[0]
    if len({topo.domain_of(g) for g in group}) == 1:
        return SPANS[1]
    level = 0 if topo.tiers is None else topo.tiers.group_level({topo.node_of(g) for g in group})
    if level == 0 and topo.domain_gpus <= topo.gpus_per_node:
        return "crosses nodes"  # a domain is a node: the same boundary, named as users know it
    return SPANS[2 + level]


def placement(grid: Grid, topo: Topology) -> dict[str, str]:
    """For each parallel dimension of degree > 1, the span of its worst-placed group."""
    degree = {
        "tp": grid.tp,
        "cp": grid.cp,
        "dp": grid.dp * grid.cp,
        "pp": grid.pp,
        "ep": grid.ep,
        "etp": grid.etp,
        "edp": grid.edp,
    }
    out: dict[str, str] = {}
    for kind, n in degree.items():
        if n <= 1 or (kind == "dp" and grid.dp == 1):
            continue
        spans = {group_span(topo, grp) for grp in grid.groups(kind, PLACEMENT_SCAN_GPUS)}
        out[kind] = max(spans, key=_rank)
    return out
