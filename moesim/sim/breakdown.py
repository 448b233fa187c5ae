"""Where a simulated step's time went, read off the ranks' logs.

Step time is split per simulated rank into parts that sum to it:
``compute`` (the compute stream busy, optimizer included) + ``exposed_comm`` (some stream
communicating while the compute stream idles) + the idle rest (nothing running: waiting for a
pipeline neighbour, or finished before the slowest rank), itself split in two: ``imbalance``,
the work (compute + exposed communication) the busiest rank does beyond this rank's, which this
rank spends waiting for it, and ``bubble``, the idle time even the busiest rank has (the
schedule's fill and drain). ``all_to_all``, ``tp_comm``,
``cp_comm``, ``dp_comm`` and ``pp_comm`` are the time each kind of communication ran, hidden
or not; ``optimizer`` is the part of ``compute`` the optimizer step took (gradients to fp32,
their norm, Adam, weights written back: ``moesim.sim.optimizer_step``).
The reported breakdown is the mean over simulated ranks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from moesim.sim.context import SimContext
from moesim.sim.engine import (
    COMM_CATEGORIES,
    Rank,
    exposed_length_s,
    union_length_s,
)
from moesim.sim.vector_engine import VectorRank


def _compute_spans(rank: Rank) -> list[tuple[float, float]]:
    """The compute intervals, each run of back-to-back ones (a hold of the stream is one
    already) merged into one span: the same union, a shorter sort."""
    spans: list[tuple[float, float]] = []
    for entry in rank.log:
        if entry[0] != "compute":
            continue
        a, b = entry[3], entry[4]
        if spans and spans[-1][1] == a:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
    return spans


def rank_breakdown(rank: Rank, step_s: float) -> dict[str, float]:
    compute = _compute_spans(rank)
    comm = [(e[3], e[4]) for e in rank.log if e[0] != "compute"]
    busy_s = union_length_s(compute)
    exposed_s = exposed_length_s(comm, compute)
    out = {
        "compute": busy_s,
        "exposed_comm": exposed_s,
        "bubble": max(step_s - busy_s - exposed_s, 0.0),
    }
    per_cat: dict[str, float] = defaultdict(float)
    for entry in rank.log:
        cat = entry[2]
        if len(entry) == 5:
            per_cat[cat] += entry[4] - entry[3]
        elif cat != "compute":  # a hold outside plain compute (the optimizer): per kernel
            _, ops, _, t, _, f = entry
            for _, d in ops:
                if d > 0:
                    per_cat[cat] += (t + d * f) - t
                    t += d * f
    for cat in COMM_CATEGORIES:
        out[cat] = per_cat[cat]
    out["optimizer"] = per_cat["optimizer"]
    return out


def split_idle(per_rank: list[dict[str, float]]) -> None:
    """Split each rank's idle time (``bubble``) into the wait for the busiest rank's extra
    work (``imbalance``) and the rest (``bubble``: the schedule's), in place."""
    work = [b["compute"] + b["exposed_comm"] for b in per_rank]
    top = max(work, default=0.0)
    for b, w in zip(per_rank, work, strict=True):
        b["imbalance"] = min(b["bubble"], top - w)
        b["bubble"] -= b["imbalance"]


STAGE_KEY = "stage."  # per-stage parts travel in the breakdown as "stage.<rank>.<part>"


def stage_of(ctx: SimContext) -> Callable[[Rank], int] | None:
    if ctx.parallel.pp == 1:
        return None
    return lambda r: ctx.grid.coords(r.gpu)[0]


def measure(
    ranks: list[Rank], stage_of: Callable[[Rank], int] | None = None
) -> tuple[float, dict[str, float]]:
    """Step time (the last interval's end) and the mean per-rank breakdown; with
    ``stage_of``, also each pipeline stage's mean compute, exposed communication and idle
    time (keys ``stage.<r>.compute|exposed_comm|idle``)."""
    step_s = max(
        (
            r.last_end_s() if isinstance(r, VectorRank) else max((e[4] for e in r.log), default=0.0)
            for r in ranks
        ),
        default=0.0,
    )
    per_rank: list[dict[str, float]] = []
    owners: list[Rank] = []  # the (vector) rank of each entry of per_rank
    for r in ranks:
        parts = r.breakdowns(step_s) if isinstance(r, VectorRank) else [rank_breakdown(r, step_s)]
        per_rank += parts
        owners += [r] * len(parts)
    split_idle(per_rank)
    keys = ("compute", *COMM_CATEGORIES, "bubble", "imbalance", "exposed_comm", "optimizer")
    out = {k: sum(b[k] for b in per_rank) / len(per_rank) for k in keys}
    if stage_of is not None:
        groups: dict[int, list[dict[str, float]]] = defaultdict(list)
        for r, b in zip(owners, per_rank, strict=True):
            groups[stage_of(r)].append(b)
        for st, bs in groups.items():
            n = len(bs)
            out[f"{STAGE_KEY}{st}.compute"] = sum(b["compute"] for b in bs) / n
            out[f"{STAGE_KEY}{st}.exposed_comm"] = sum(b["exposed_comm"] for b in bs) / n
            out[f"{STAGE_KEY}{st}.idle"] = sum(b["bubble"] + b["imbalance"] for b in bs) / n
    return step_s, out


def stage_table(
    ctx: SimContext, breakdown: dict[str, float], memory_GB: list[float]
) -> list[dict[str, object]]:
    """The result's ``stages``: per pipeline rank its layout, compute, exposed communication,
    idle seconds (they sum to the step time) and memory; removes the stage keys from
    ``breakdown``."""
    parts = {k: breakdown.pop(k) for k in [k for k in breakdown if k.startswith(STAGE_KEY)]}
    rows = []
    for st in ctx.stages:
        pre = f"{STAGE_KEY}{st.rank}."
        if pre + "compute" not in parts:
            continue
        rows.append(
            {
                "stage": st.rank,
                "layers": st.layout,
                "compute_s": parts[pre + "compute"],
                "exposed_comm_s": parts[pre + "exposed_comm"],
                "idle_s": parts[pre + "idle"],
                "memory_GB": memory_GB[st.rank],
            }
        )
    return rows
