"""DualPipe's mirror under symmetric fidelity: rank pp−1−r runs rank r's program with the two
directions swapped, so it is simulated once.

DualPipe (``moesim.sim.dualpipe``) feeds microbatches from both ends. Rank r and rank pp−1−r
hold the same two pipeline positions (h and pp−1−h, h = min(r, pp−1−r)) and run the same
chunk order (``dualpipe_slots`` depends on h alone); what differs is which direction is
whose own, so rank pp−1−r's chunk of direction 1−d, microbatch index i, is rank r's chunk of
direction d, index i (DeepSeek-V3 report Fig. 5: the schedule is symmetric about the middle).
Symmetric fidelity already simulates one rank for all ranks that do the same work
(DESIGN.md: "Symmetric ranks are simulated once"); this applies the same rule along the
pipeline and halves the ranks and the routing draws.

What makes the mirror exact, and is checked before it is used (``mirror_applies``):

- each simulated rank r and its mirror pp−1−r have groups (TP, CP, DP, EP, expert TP and
  DP) that time alike on the same link class, and the same fault factors (an EP group's
  all-to-alls are timed by the stage table of the layer's pipeline position, which both read:
  its link class is what the rank adds);
- rank r's pipeline sends to r±1 time as its mirror's to pp−1−r∓1;
- the routing draws agree: a symmetric stage table holds one draw per (MoE layer, microbatch
  index within a direction), read by both directions (``MoEDrawTables.draw_microbatches``).
  That is the one modelling choice: the two directions' microbatch i see the same expert
  loads, where without the mirror they are drawn apart. Both are draws of the same
  distribution; the step's slowest rank then comes from half as many independent draws.
  Against independent draws the step moved by at most 0.004% on DeepSeek-V3 on 2048 H800
  (seeds 0-3, uniform and zipf 1.0; breakdown parts by at most 0.16%), and by at most 0.08%
  on the small steps of tests/sim/test_dualpipe_mirror.py (2026-12-04).

Only the sends that cross the middle (rank pp/2−1 to pp/2 and back) reach an unsimulated
rank; each is delivered to the mirror's own chunk instead (``mirror_key``): what rank pp/2
would receive at the time it arrives is what its mirror, rank pp/2−1, receives for the other
direction. After the run, each unsimulated rank is a ``Rank`` that replays its mirror's log
(``mirror_of``), so the breakdown, stage table and trace still have every stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moesim.sim.engine import Rank
from moesim.sim.faults import rank_faults
from moesim.sim.vector_stage import groups_time_alike, member_group

if TYPE_CHECKING:
    from moesim.sim.context import SimContext

#: the groups a rank's programs time collectives on (``moesim.sim.grid.GROUP_DIMS``)
GROUP_KINDS = ("tp", "cp", "dp", "ep", "etp", "edp")


def mirror_stage(pp: int, stage: int) -> int:
    return pp - 1 - stage


def mirror_applies(ctx: SimContext) -> bool:
    """Whether each simulated rank of the upper half runs its mirror's program exactly (the
    module docstring lists what is compared)."""
    if ctx.fidelity == "full" or ctx.parallel.pp < 2:
        return False
    pp, gpus = ctx.parallel.pp, ctx.simulated_gpus()
    for r in range(pp // 2):
        a, b = gpus[r], gpus[mirror_stage(pp, r)]
        fa = rank_faults(ctx.scenario, ctx.grid, a, ctx.fidelity)
        fb = rank_faults(ctx.scenario, ctx.grid, b, ctx.fidelity)
        if (fa.compute_factor, fa.link_factor) != (fb.compute_factor, fb.link_factor):
            return False
        for kind in GROUP_KINDS:
            groups = {member_group(ctx, kind, a), member_group(ctx, kind, b)}
            if not groups_time_alike(ctx, kind, groups):
                return False
        for step in (-1, 1):  # r → r+step mirrors pp−1−r → pp−1−r−step
            n = r + step
            if 0 <= n < pp:
                sends = {(a, gpus[n]), (b, gpus[mirror_stage(pp, n)])}
                if not groups_time_alike(ctx, "pp", sends):
                    return False
    return True


def mirror_key(key: tuple, half_microbatches: int) -> tuple:
    """The pipeline inbox key ``(kind, direction, q, microbatch, position)`` of a send to an
    unsimulated rank, as its mirror receives it: the other direction, the same index within
    the direction (global microbatches: direction d holds d·m/2 … (d+1)·m/2 − 1)."""
    kind, d, q, mb, pos = key
    return kind, 1 - d, q, mb + half_microbatches if d == 0 else mb - half_microbatches, pos


def result_ranks(ctx: SimContext) -> list[Rank]:
    """The ranks a result is read from, by GPU: the simulated ones, and for each GPU of
    ``ctx.mirrored`` a ``Rank`` replaying its mirror's log."""
    ranks = dict(ctx.ranks)
    for gpu, src in ctx.mirrored.items():
        stage, q = ctx.grid.coords(gpu)
        r = Rank(ctx.env, gpu, f"gpu{gpu} (stage {stage}, rank {q}; mirrors gpu{src})")
        r.log, r.mirror_of = ctx.ranks[src].log, src
        ranks[gpu] = r
    return [ranks[g] for g in sorted(ranks)]
