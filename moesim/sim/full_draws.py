"""Full fidelity's routing draws: every EP group's per-source copies, per (MoE layer,
microbatch), reduced at once to what its ranks read (each member's received copies, the
group's dispatch and combine times).

Legend: ``N`` draws, ``R`` EP ranks (members), ``E`` experts, ``L`` links.

The all-to-all of a draw is timed as the symmetric fidelity times its skewed ones
(``SimContext.skewed_a2a_s``): the balanced pattern once by the network mode (flow or
alpha–beta), then each draw adds the change in its bottleneck link's load over capacity. A
draw's link loads are linear in its copy matrix (``all_to_all_pair_link_loads``), so they are a
gather and a sum over links, not a flow simulation: at 2048 GPUs (EP 64, 960 draws per
group, 32 groups) one max-min flow simulation per draw took 0.13 s, about two hours in all.
The bottleneck's load over capacity is the flow time's lower bound, reached when the pattern
is rank-one (sources alike, as in the symmetric fidelity); tests/sim compare the estimate with
the flow simulation of per-source draws.

Without a capacity factor a source's copies are drawn per destination rank (a multinomial
over ranks: the law of its per-expert counts summed); with one, per expert, since the
capacity caps each expert. Draws are made in blocks (``DRAW_BLOCK``) so a group never holds
its (N, R, E) counts at once (126 MB per group at EP 64); the block size does not change the
values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from moesim.sim.collectives import all_to_all_pair_link_loads

if TYPE_CHECKING:
    from moesim.sim.context import SimContext

DRAW_BLOCK = 64  # draws reduced at a time


@dataclass(frozen=True)
class GroupDraws:
    """One EP group's draws, reduced: row n is (MoE layer, microbatch) n."""

    received_NR: np.ndarray  # copies each member's experts process
    dispatch_N: np.ndarray  # alone-on-the-link seconds of the dispatch
    combine_N: np.ndarray  # and of the combine


@dataclass(frozen=True)
class PairLegs:
    """``all_to_all_pair_link_loads`` as arrays: leg k puts ``s_per_copy[k]`` seconds of its
    link's capacity per copy of pair ``pair[k]`` (= i·R + j); legs sorted by link, the
    links' first legs at ``starts``."""

    pair: np.ndarray
    s_per_copy: np.ndarray
    starts: np.ndarray

    def beta_s(self, copies_NRR: np.ndarray) -> np.ndarray:
        """Per draw, the largest link load over capacity (seconds)."""
        flat = copies_NRR.reshape(len(copies_NRR), -1)
        per_link = np.add.reduceat(flat[:, self.pair] * self.s_per_copy, self.starts, axis=1)
        return per_link.max(axis=1)


def pair_legs(ctx: SimContext, group: tuple[int, ...], bytes_per_copy: float, kind: str):
    """The group's ``PairLegs`` for a dispatch or combine (cached per group shape)."""
    key = ("a2a-pairs", kind, ctx.shape(group), bytes_per_copy)
    hit = ctx._load_matrices.get(key)
    if hit is None:
        pat = ctx.pattern(group)
        legs = all_to_all_pair_link_loads(
            ctx.topo,
            group,
            pat.hierarchical,
            bytes_per_copy * pat.gpu_dedup,
            bytes_per_copy * pat.node_dedup,
            reverse=kind.startswith("combine"),
        )
        legs.sort(key=lambda leg: leg[2])
        ep = len(group)
        links = np.array([leg[2] for leg in legs], dtype=np.int64)
        cap = np.array(ctx.topo.capacity_Bps)
        hit = ctx._load_matrices[key] = PairLegs(
            pair=np.array([i * ep + j for i, j, _, _ in legs], dtype=np.int64),
            s_per_copy=np.array([b for _, _, _, b in legs]) / cap[links],
            starts=np.flatnonzero(np.r_[True, links[1:] != links[:-1]]) if legs else links,
        )
    return hit


def pattern_a2a_s(
    ctx: SimContext,
    group: tuple[int, ...],
    copies_NRR: np.ndarray,
    balanced_copies: float,
    bytes_per_copy: float,
    kind: str,
) -> np.ndarray:
    """Alone times of dispatches (or combines) of copy matrices ``copies_NRR[n, i, j]``
    (member i to experts on member j; the diagonal stays home): the balanced pattern
    (``balanced_copies`` sent by every member, spread evenly) timed by the network mode, plus
    each draw's change in bottleneck load over capacity."""
    ep = len(group)
    bal = np.full((ep, ep), balanced_copies / ep)
    np.fill_diagonal(bal, 0.0)
    base_s = ctx.a2a_s(group, bal, bytes_per_copy, kind)
    legs = pair_legs(ctx, group, bytes_per_copy, kind)
    if legs.pair.size == 0:
        return np.full(len(copies_NRR), base_s)
    beta_bal_s = float(legs.beta_s(bal[None])[0])
    return np.maximum(base_s + legs.beta_s(copies_NRR) - beta_bal_s, 0.0)


def group_draws(
    ctx: SimContext, group: tuple[int, ...], n: int, stage: int, disp_b: float, comb_b: float
) -> GroupDraws:
    """The group's ``n`` draws (stream: stage, first member), reduced block by block; adds
    the offered and dropped copies to the context's counts."""
    ep = len(group)
    offered = ctx.tokens_moe * ctx.moe.top_k
    allgather = ctx.pattern(group).allgather
    received = np.empty((n, ep))
    dispatch, combine = np.zeros(n), np.zeros(n)
    kept = 0
    start = 0
    sampler = ctx.sampler
    if sampler.capacity_factor is None:  # the copies per destination rank are enough
        blocks = sampler.draw_source_to_rank(n, ctx.tokens_moe, stage, group[0], chunk=DRAW_BLOCK)
    else:  # the capacity caps each expert: draw per expert, then sum over each rank's
        blocks = sampler.draw_per_source(n, ctx.tokens_moe, stage, group[0], chunk=DRAW_BLOCK)
    for counts in blocks:
        end = start + len(counts)
        kept += counts.sum()
        copies = counts.reshape(len(counts), ep, ep, -1).sum(axis=3).astype(float)
        received[start:end] = copies.sum(axis=1)
        if not allgather:
            dispatch[start:end] = pattern_a2a_s(ctx, group, copies, offered, disp_b, "dispatch")
            combine[start:end] = pattern_a2a_s(ctx, group, copies, offered, comb_b, "combine")
        start = end
    if allgather:  # independent of where the tokens go
        dispatch[:] = ctx.allgather_s(group, ctx.tokens_moe, disp_b / ctx.model.d_model, "dispatch")
        combine[:] = ctx.allgather_s(group, ctx.tokens_moe, comb_b / ctx.model.d_model, "combine")
    ctx.offered_copies += float(n * ep * offered)
    ctx.dropped_copies += float(n * ep * offered - kept)
    return GroupDraws(received, dispatch, combine)
