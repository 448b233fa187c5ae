"""Where each parallel group lands on the cluster: inside a node, inside an NVLink domain, or
across domains, leaves or pods (the result's ``placement``).

A group's span decides which links its collectives use: NVLink inside a domain, the NICs and
the switch tiers across. ``parallel.order`` and the cluster's shape decide the spans; groups of
one kind can differ (an EP group of 16 in domains of 72 GPUs: four fit, the fifth straddles two
domains), so each kind reports its worst group.
"""

from __future__ import annotations

import math

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
EXPERT_KINDS = ("ep", "etp", "edp")


def _rank(span: str) -> int:
    return SPANS.index("crosses domains" if span == "crosses nodes" else span)


def _scan_gpus(grid: Grid, topo: Topology) -> int:
    """Ranks whose groups are looked at: with stages as blocks of ranks, the layout repeats
    every lcm(stage size, the cluster's period) ranks (shifted groups meet the same
    boundaries), so one repetition shows every kind of group; at most PLACEMENT_SCAN_GPUS."""
    if not grid.pp_last:
        return PLACEMENT_SCAN_GPUS
    return min(PLACEMENT_SCAN_GPUS, math.lcm(grid.stage_size, topo.period_gpus))


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


def placement(grid: Grid, topo: Topology, moe: bool = True) -> dict[str, str]:
    """For each parallel dimension of degree > 1, the span of its worst-placed group (the
    expert dimensions ep, etp, edp only for an MoE model)."""
    degree = {
        "tp": grid.tp,
        "cp": grid.cp,
        "dp": grid.dp * grid.cp,
        "pp": grid.pp,
        "ep": grid.ep,
        "etp": grid.etp,
        "edp": grid.edp,
    }
    scan = _scan_gpus(grid, topo)
    out: dict[str, str] = {}
    for kind, n in degree.items():
        if n <= 1 or (kind == "dp" and grid.dp == 1) or (kind in EXPERT_KINDS and not moe):
            continue
        spans = {group_span(topo, grp) for grp in grid.groups(kind, scan)}
        out[kind] = max(spans, key=_rank)
    return out


def _crossing_pairs(topo: Topology, group: tuple[int, ...]) -> int:
    """Ordered member pairs in different NVLink domains: the traffic that leaves NVLink."""
    per_domain: dict[int, int] = {}
    for g in group:
        d = topo.domain_of(g)
        per_domain[d] = per_domain.get(d, 0) + 1
    return len(group) ** 2 - sum(c * c for c in per_domain.values())


def representative_q(grid: Grid, topo: Topology) -> int:
    """The rank (index in its stage) symmetric fidelity simulates for every stage.

    All nodes alike and groups packed into nodes (the default), every rank sees the same
    groups and the first stands for all. On NVLink domains of several nodes, or a fabric with
    leaves and pods, some groups can straddle a boundary the first rank's groups do not (EP 16
    in domains of 72: the fifth group spans two): the step waits for them, so the rank whose
    EP group (then TP, then DP group) crosses the widest boundary, with the most member pairs
    across domains, stands for the stage."""
    if topo.period_gpus == topo.gpus_per_node:
        return 0
    limit = min(grid.stage_size, PLACEMENT_SCAN_GPUS)
    # each group scored once (groups of a kind partition the ranks: O(limit) work per kind)
    scores: dict[str, dict[int, tuple[int, int]]] = {}
    for kind in ("ep", "tp", "dp"):
        per_rank: dict[int, tuple[int, int]] = {}
        for q in range(limit):
            g = grid.gpu(0, q)
            if g in per_rank:
                continue
            grp = grid.group_of(kind, g, PLACEMENT_SCAN_GPUS)
            score = (_rank(group_span(topo, grp)), _crossing_pairs(topo, grp))
            per_rank.update(dict.fromkeys(grp, score))
            per_rank[g] = score  # a group cut at the scan limit may leave g out
        scores[kind] = per_rank

    def badness(q: int) -> tuple[int, ...]:
        g = grid.gpu(0, q)
        ep, tp, dp = (scores[k][g] for k in ("ep", "tp", "dp"))
        return (*ep, *tp, *dp, -q)

    return max(range(limit), key=badness)
