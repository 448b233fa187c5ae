"""``parallel.pipeline_balance: auto``: place the layers so that the slowest pipeline rank is as
fast as possible, memory permitting, and write the choice as a Megatron-Core layout string.

Each unit of the model (``E`` the embedding, each ``t`` decoder layer, the ``m`` MTP layers as
one unit, ``L`` the head and loss) costs its forward plus backward time for one microbatch on
one rank, from the same op times the simulator runs (``SimContext.layers``, ``StageExtras``):
attention, dense FFN or shared experts, router, norms, selective recomputation, and for an MoE
layer its experts at the mean load (tokens · top_k over the EP group) and, outside DualPipe,
its four all-to-alls alone on the links (DualPipe hides them under the other chunk's compute).

The units are cut, in order, into the ``pp · virtual_stages`` chunks so that the heaviest chunk
is as light as possible (a bisection on the threshold with a greedy fill that leaves a unit for
each later chunk; ``min_max_split``), once filling from the front and once from the back. A
rank's load is the sum of its chunks (under DualPipe: its two positions h and pp−1−h). A third
family of candidates sets the first and last chunks' decoder layers (every pair of counts up to
twice the mean) and spreads the rest evenly (under DualPipe over the pairs of positions that
share a rank). Of all these and the default layout, the one with the shortest estimated step
(``step_estimate_s``: the busiest rank's work plus a pipeline fill and drain of its longest
chunk), then the lightest heaviest rank, the next heaviest, …, among those that fit in memory
(``analytic.memory.memory_per_stage``) is kept, with the runner-up and the default layout; the
simulator runs each and keeps the fastest that fits (``moesim.sim.run.simulate``), so ``auto`` is
never slower than the default layout, and never chooses a layout that does not fit over one that
does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from moesim.analytic.layout import layout_symbols
from moesim.analytic.memory import memory_per_stage
from moesim.analytic.microbatches import effective_schedule, n_microbatches
from moesim.sim.context import SimContext
from moesim.sim.stage_extras import StageExtras, mtp_times_s
from moesim.specs import ModelSpec, Scenario
from moesim.specs.pipeline_layout import check_layout, write_layout

Unit = tuple[str, ...]  # the symbols of one unit: ("E",), ("t",), ("m", "m"), ("L",)


def unit_costs_s(ctx: SimContext) -> tuple[list[Unit], list[float]]:
    """The model's units in order and their forward + backward seconds per microbatch."""
    m, p = ctx.model, ctx.parallel
    extras = StageExtras(ctx)
    dual = effective_schedule(p, n_microbatches(ctx.scenario)) == "dualpipe"
    units: list[Unit] = [("E",)]
    costs = [sum(extras.embedding_s)]
    for i in sorted(ctx.layers):
        units.append(("t",))
        costs.append(_layer_s(ctx, i, include_a2a=not dual))
    if m.mtp_depth:
        units.append(("m",) * m.mtp_depth)
        costs.append(sum(mtp_times_s(ctx, m.mtp_depth)))
    units.append(("L",))
    costs.append(sum(extras.head_s))
    return units, costs


def _layer_s(ctx: SimContext, layer: int, include_a2a: bool) -> float:
    lc = ctx.layers[layer]
    t = lc.attention_s + lc.attention_bwd_s + 3 * lc.norms_s + lc.ffn_s + lc.ffn_bwd_s
    t += lc.router_s + lc.router_bwd_s
    mode = ctx.parallel.recompute
    if mode == "selective":
        t += lc.selective_recompute_s
    elif mode == "full":
        t += lc.attention_s + lc.norms_s + lc.ffn_s + lc.router_s
    if lc.is_moe and ctx.moe is not None:
        copies = ctx.tokens_moe * ctx.moe.top_k
        fwd = ctx.expert_cost.time_s(copies)
        t += fwd + ctx.expert_cost.time_s(copies, backward=True) + (fwd if mode == "full" else 0)
        passes = 3 if mode == "full" else 2  # forward (again under full), backward
        if include_a2a and ctx.parallel.ep > 1:
            group = ctx.ep_group(0)
            ep = len(group)
            bal = np.full((ep, ep), copies / ep)
            np.fill_diagonal(bal, 0.0)
            disp_b = ctx.model.d_model * ctx.precision.dispatch_bytes
            comb_b = ctx.model.d_model * ctx.precision.activation_bytes
            t += passes * ctx.a2a_s(group, bal, disp_b, "dispatch")
            t += passes * ctx.a2a_s(group, bal, comb_b, "combine")
    return t


def min_max_split(costs: list[float], parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous groups of ``costs`` (each non-empty when there are
    enough items) whose heaviest group is lightest: bisection on the threshold, greedy fill."""
    n = len(costs)
    if parts >= n:
        return [1] * n + [0] * (parts - n)

    def fill(limit: float) -> list[int] | None:
        sizes, acc, size = [], 0.0, 0
        for i, c in enumerate(costs):
            left_items, left_parts = n - i, parts - len(sizes)
            if size and (acc + c > limit or left_items < left_parts):
                sizes.append(size)
                acc, size = 0.0, 0
                if len(sizes) == parts:
                    return None
            if c > limit:
                return None
            acc += c
            size += 1
        sizes.append(size)
        return sizes + [0] * (parts - len(sizes))

    lo, hi = max(costs), sum(costs)
    best = fill(hi)
    assert best is not None
    for _ in range(60):
        mid = (lo + hi) / 2
        got = fill(mid)
        if got is None:
            lo = mid
        else:
            hi, best = mid, got
    return best


def _symbols(units: list[Unit], sizes: list[int]) -> list[list[str]]:
    out, i = [], 0
    for size in sizes:
        out.append([sym for u in units[i : i + size] for sym in u])
        i += size
    return out


def chunk_loads_s(stages: list[list[str]], unit_s: Callable[[str, int], float]) -> list[float]:
    """Seconds per microbatch of each virtual stage (forward + backward)."""
    out, t_index = [], 0
    for st in stages:
        s = 0.0
        for sym in st:
            s += unit_s(sym, t_index)
            t_index += sym == "t"
        out.append(s)
    return out


def rank_loads_s(
    stages: list[list[str]], unit_s: Callable[[str, int], float], pp: int, dual: bool
) -> list[float]:
    """Seconds per microbatch each rank computes: the sum of its chunks (DualPipe: of its two
    positions, each run for half the microbatches, so the mean of the two counts twice)."""
    chunk_s = chunk_loads_s(stages, unit_s)
    loads = [sum(chunk_s[c] for c in range(r, len(stages), pp)) for r in range(pp)]
    if dual:
        loads = [loads[r] + loads[pp - 1 - r] for r in range(pp)]
    return loads


def step_estimate_s(
    stages: list[list[str]],
    unit_s: Callable[[str, int], float],
    pp: int,
    dual: bool,
    microbatches: int,
) -> float:
    """The busiest rank's work over the step plus a fill and drain of pp − 1 of the longest
    chunk (1F1B: (m + p − 1) stage times with equal stages, Narayanan et al. 2021 §2.2.1;
    DualPipe runs each position for half the microbatches)."""
    per_mb = max(rank_loads_s(stages, unit_s, pp, dual))
    work = per_mb * (microbatches / 2 if dual else microbatches)
    return work + (pp - 1) * max(chunk_loads_s(stages, unit_s))


def balance_candidates(s: Scenario, ctx: SimContext, keep: int = 2) -> list[Scenario]:
    """``s`` with ``parallel.pipeline_layout`` set (and balance even) to each of the ``keep``
    best layouts by the estimate among those that fit (all when none fits), and to the default
    layout: the simulator runs them all and keeps the fastest (``moesim.sim.run``)."""
    p, m = s.parallel, s.model
    units, costs = unit_costs_s(ctx)
    by_sym = {"E": costs[0], "L": costs[-1]}
    if m.mtp_depth:
        by_sym["m"] = costs[-2] / m.mtp_depth
    layer_s = costs[1 : 1 + len(ctx.layers)]

    def unit_s(sym: str, t_index: int) -> float:
        return layer_s[t_index] if sym == "t" else by_sym[sym]

    even = layout_symbols(m, p.model_copy(update={"pipeline_balance": "even"}))
    if m.n_encoder_layers:  # layout strings place decoder layers only: keep the even split
        return s.model_copy(
            update={"parallel": p.model_copy(update={"pipeline_balance": "even"})}
        ), write_layout(even)
    parts = p.pp * p.virtual_stages
    dual = effective_schedule(p, n_microbatches(s)) == "dualpipe"
    candidates = [even]
    for reverse in (False, True):
        c = costs[::-1] if reverse else costs
        sizes = min_max_split(c, parts)
        candidates.append(_symbols(units, sizes[::-1] if reverse else sizes))
    n = len(layer_s)
    for a in range(0, 2 * n // parts + 2):
        for b in range(0, 2 * n // parts + 2):
            candidates.append(_edge_layout(m, n, parts, p.pp, dual, a, b))
    mbs = n_microbatches(s)
    scored = sorted(  # the estimated step, then the heaviest rank, the next heaviest, …
        (
            (
                step_estimate_s(st, unit_s, p.pp, dual, mbs),
                sorted(rank_loads_s(st, unit_s, p.pp, dual), reverse=True),
            ),
            i,
            st,
        )
        for i, st in enumerate(candidates)
        if st is not None and _valid(st, p.pp, m, p.virtual_stages)
    )
    hbm = s.cluster.gpu.hbm_GB * 1e9
    fitting: list[list[list[str]]] = []
    for _, _, stages in scored[:MEMORY_CHECKS]:
        if max(e.total for e in memory_per_stage(_with_layout(s, write_layout(stages)))) <= hbm:
            fitting.append(stages)
            if len(fitting) == keep:
                break
    chosen = fitting or [st for _, _, st in scored[:keep]]  # nothing fits: the fastest
    layouts = list(dict.fromkeys(write_layout(st) for st in [*chosen, even]))
    return [_with_layout(s, layout) for layout in layouts]


MEMORY_CHECKS = 40  # candidates, fastest first, whose memory is estimated before the even one


def _edge_layout(
    m: ModelSpec, n: int, parts: int, pp: int, dual: bool, a: int, b: int
) -> list[list[str]] | None:
    """``a`` decoder layers in the first chunk (with the embedding), ``b`` in the last (with
    the MTP layers and the head), the rest as even as possible over the chunks in between
    (under DualPipe: over the pairs of positions h and pp−1−h that share a rank, each pair
    split evenly). None when the counts do not fit."""
    rest = n - a - b
    if rest < 0 or (parts == 2 and rest) or parts < 2:
        return None
    counts = [a] + [0] * (parts - 2) + [b]
    if parts > 2:
        if dual and parts == pp and pp % 2 == 0:
            pairs = pp // 2 - 1
            if pairs == 0:
                return None
            q, r = divmod(rest, pairs)
            for i in range(pairs):
                x = q + (1 if i < r else 0)
                h = 1 + i
                counts[h], counts[pp - 1 - h] = x - x // 2, x // 2
        else:
            q, r = divmod(rest, parts - 2)
            for i in range(parts - 2):
                counts[1 + i] = q + (1 if i < r else 0)
    stages = [["t"] * c for c in counts]
    stages[0].insert(0, "E")
    stages[-1] += ["m"] * m.mtp_depth + ["L"]
    return stages


def _valid(stages: list[list[str]], pp: int, m: ModelSpec, vp: int) -> bool:
    try:
        check_layout(stages, pp, m.n_layers, m.mtp_depth, vp)
    except ValueError:
        return False
    return True


def _with_layout(s: Scenario, layout: str) -> Scenario:
    p = s.parallel.model_copy(update={"pipeline_layout": layout, "pipeline_balance": "even"})
    return s.model_copy(update={"parallel": p})
