"""The vector engine's view of a simulation context (``moesim.sim.vector_engine``): which
runs it takes (every stage's groups of one kind time alike), the vector rank of a stage, and a
stage's routing draws as (draws, members) arrays.

Legend: ``N`` draws, ``M`` members (a stage's ranks, in stage order).

The draws are the per-rank engine's (``full_draws.group_draws`` per EP group, cached in the
context under the same keys), so both engines see the same routing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moesim.sim.faults import fault_label, rank_faults
from moesim.sim.full_draws import group_draws
from moesim.sim.vector_engine import VectorDraw, VectorRank

if TYPE_CHECKING:
    from moesim.sim.context import SimContext


def stage_rank(ctx: SimContext, gpu: int) -> VectorRank:
    """The vector rank of ``gpu``'s stage (kept under the stage's first GPU)."""
    stage, _ = ctx.grid.coords(gpu)
    lead = ctx.grid.gpu(stage, 0)
    r = ctx.ranks.get(lead)
    if r is None:
        members = [ctx.grid.gpu(stage, q) for q in range(ctx.grid.stage_size)]
        faults = [rank_faults(ctx.scenario, ctx.grid, g, "full") for g in members]
        labels = [
            f"gpu{g} (stage {stage}, rank {q}){fault_label(rf)}"
            for q, (g, rf) in enumerate(zip(members, faults, strict=True))
        ]
        compute = np.array([rf.compute_factor for rf in faults])
        links = {k for rf in faults for k in rf.link_factor}
        r = VectorRank(
            ctx.env,
            lead,
            f"stage {stage} ({len(members)} ranks)",
            members,
            labels,
            lambda kind, g: member_group(ctx, kind, g),
            ctx.comm_sm_slowdown,
            compute if (compute != 1.0).any() else 1.0,
            {k: np.array([rf.link_factor.get(k, 1.0) for rf in faults]) for k in links},
        )
        ctx.ranks[lead] = r  # type: ignore[assignment]
    return r  # type: ignore[return-value]


def stages_alike(ctx: SimContext) -> bool:
    """Within each stage, the groups of a kind take the same times on the same link class
    as the stage's first rank's (which the programs time), and so do the pipeline sends
    to any other stage: what the vector engine assumes."""
    grid = ctx.grid
    for stage in range(grid.pp):
        members = [grid.gpu(stage, q) for q in range(grid.stage_size)]
        for kind in ("tp", "cp", "dp", "ep", "edp"):
            groups = {member_group(ctx, kind, g) for g in members}
            if not groups_time_alike(ctx, kind, groups):
                return False
        for other in range(grid.pp):
            if other != stage:
                pairs = {(g, grid.gpu(other, q)) for q, g in enumerate(members)}
                if not groups_time_alike(ctx, "pp", pairs):
                    return False
    return True


def groups_time_alike(ctx: SimContext, kind: str, groups: set[tuple[int, ...]]) -> bool:
    """The groups share a link class and, one per shape, time alike the collectives
    ``kind`` runs (probed at a latency-bound and a bandwidth-bound size)."""
    if len({ctx.link_of(g) for g in groups}) > 1:
        return False
    shapes = list({ctx.shape(g): g for g in sorted(groups)}.values())
    if len(shapes) == 1 or kind == "ep":  # EP: each group's draws are timed for it
        return True
    for nbytes in (1e5, 1e9):
        if kind == "pp":
            probes = [[ctx.p2p_s(a, b, nbytes)] for a, b in shapes]
        elif kind == "cp":
            probes = [
                [ctx.ring_exchange_s(g, nbytes, k) for k in ("all_gather", "reduce_scatter")]
                for g in shapes
            ]
        else:
            probes = [
                [
                    ctx.all_gather_s(g, nbytes),
                    ctx.reduce_scatter_s(g, nbytes),
                    ctx.all_reduce_s(g, nbytes),
                ]
                for g in shapes
            ]
        if not np.allclose(probes, probes[0], rtol=1e-9, atol=0.0):
            return False
    return True


def member_group(ctx: SimContext, kind: str, gpu: int) -> tuple[int, ...]:
    if kind == "dp":
        return ctx.dp_group(gpu)
    if kind == "edp":
        return ctx.edp_group(gpu)
    return ctx.grid.group_of(kind, gpu)


def stage_draw(ctx: SimContext, stage: int, idx: int, n: int, disp_b: float, comb_b: float):
    """Draw ``idx`` of the stage's members (its EP groups' ``group_draws``, the tables the
    per-rank engine reads, so both engines see the same routing)."""
    table = ctx._draws.get(("vector", stage))
    if table is None:
        table = ctx._draws[("vector", stage)] = _stage_table(ctx, stage, n, disp_b, comb_b)
    received, dispatch, combine, fwd, bwd = table
    return VectorDraw(
        received[idx],
        dispatch[idx],
        combine[idx],
        [(name, t[idx]) for name, t in fwd],
        [(name, t[idx]) for name, t in bwd],
    )


def _stage_table(ctx: SimContext, stage: int, n: int, disp_b: float, comb_b: float) -> tuple:
    """(received, dispatch, combine) as (draws, members) arrays, and the experts' forward
    and backward ops as (name, (draws, members) seconds)."""
    members = [ctx.grid.gpu(stage, q) for q in range(ctx.grid.stage_size)]
    m = len(members)
    received, dispatch, combine = np.empty((n, m)), np.empty((n, m)), np.empty((n, m))
    for i, g in enumerate(members):
        group = ctx.ep_group(g)
        table = ctx._draws.get(("full", group))
        if table is None:
            table = ctx._draws[("full", group)] = group_draws(ctx, group, n, stage, disp_b, comb_b)
        received[:, i] = table.received_NR[:, ctx.grid.ep_rank(g)]
        dispatch[:, i] = table.dispatch_N
        combine[:, i] = table.combine_N
    copies = np.rint(received * ctx.parallel.etp)
    values, inverse = np.unique(copies, return_inverse=True)
    inverse = inverse.reshape(copies.shape)
    fwd, bwd = _expert_times(ctx, values, False), _expert_times(ctx, values, True)
    fwd_ops = [(name, t[inverse]) for name, t in fwd]
    bwd_ops = [(name, t[inverse]) for name, t in bwd]
    return received, dispatch, combine, fwd_ops, bwd_ops


def _expert_times(
    ctx: SimContext, values: np.ndarray, backward: bool
) -> list[tuple[str, np.ndarray]]:
    """The experts' ops (GEMMs and element-wise kernels, in program order) for each copy
    count of ``values`` (sorted, distinct), as (name, seconds per value); counts already
    timed for another stage are looked up, not timed again."""
    known_v, known_t, names = ctx._expert_known.get(backward, (np.empty(0), None, None))
    new = np.setdiff1d(values, known_v, assume_unique=True)
    if new.size:
        rows = []
        for c in new.tolist():
            gemm = (
                "experts_bwd" if backward else "experts",
                ctx.expert_cost.time_s(c, backward),
            )
            around = list(ctx.expert_elementwise.ops(c, backward))
            rows.append([*around, gemm] if backward else [gemm, *around])
        new_names = [name for name, _ in rows[0]]
        assert names is None or names == new_names
        new_t = np.array([[t for _, t in row] for row in rows])  # (values, ops)
        all_v = np.concatenate([known_v, new])
        all_t = new_t if known_t is None else np.concatenate([known_t, new_t])
        order = np.argsort(all_v, kind="stable")
        known_v, known_t, names = all_v[order], all_t[order], new_names
        ctx._expert_known[backward] = (known_v, known_t, names)
    at = np.searchsorted(known_v, values)
    return [(name, known_t[at, k]) for k, name in enumerate(names)]
