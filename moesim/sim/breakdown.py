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
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter

import numpy as np

from moesim.sim.context import SimContext
from moesim.sim.engine import COMM_CATEGORIES, Hold, Interval, Rank
from moesim.sim.spans import exposed_length_arr, running_sum, union_length_arr
from moesim.sim.vector_engine import VectorRank

#: the categories a breakdown sums, each's index in ``RankLog.part``
PARTS = (*COMM_CATEGORIES, "optimizer")
_PART_INDEX = {c: i for i, c in enumerate(PARTS)}
# a log entry's fields (``Interval``, ``Hold``)
_STREAM, _CATEGORY, _START, _END = (itemgetter(i) for i in (0, 2, 3, 4))


@dataclass(frozen=True)
class RankLog:
    """A rank's log as columns (entries in log order), built once per step: the breakdown's
    sums and unions run on arrays, not on 10⁴ tuples per rank. The columns are read with
    ``map(itemgetter(i), log)``, which allocates nothing per entry the garbage collector
    tracks (``zip(*log)`` holds one iterator per entry and sets off collections of the whole
    simulation's heap)."""

    log: list[Interval | Hold]
    is_compute: np.ndarray  # (entries,) bool: on the compute stream (a kernel or a hold)
    part: np.ndarray  # (entries,) int: the category's index in PARTS, −1 for another one
    start_s: np.ndarray  # (entries,)
    end_s: np.ndarray  # (entries,) a hold's: its last kernel's end

    @classmethod
    def of(cls, log: list[Interval | Hold]) -> RankLog:
        n = len(log)
        streams = np.fromiter(map(_STREAM, log), object, n)
        return cls(
            log=log,
            is_compute=np.asarray(streams == "compute", dtype=bool),
            part=np.fromiter(map(_PART_INDEX.get, map(_CATEGORY, log), repeat(-1)), np.intp, n),
            start_s=np.fromiter(map(_START, log), float, n),
            end_s=np.fromiter(map(_END, log), float, n),
        )

    def last_end_s(self) -> float:
        return float(self.end_s.max()) if self.end_s.size else 0.0

    def compute_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """The compute intervals, each run of back-to-back ones (a hold of the stream is one
        already) merged into one span: the same union, a shorter sort. (start_s, end_s)."""
        start_s, end_s = self.start_s[self.is_compute], self.end_s[self.is_compute]
        if start_s.size == 0:
            return start_s, end_s
        first = np.flatnonzero(np.r_[True, start_s[1:] != end_s[:-1]])  # each run's first
        last = np.r_[first[1:] - 1, start_s.size - 1]
        return start_s[first], end_s[last]

    def part_s(self, i: int) -> float:
        """Total time of the entries of category ``PARTS[i]``, summed in log order; a hold
        of that category (the optimizer's) adds its kernels one by one."""
        mine = np.flatnonzero(self.part == i)
        # holds are on the compute stream (``Hold``): only those entries need a look
        if not any(len(self.log[k]) == 6 for k in mine[self.is_compute[mine]]):
            return running_sum(self.end_s[mine] - self.start_s[mine])
        total = 0.0
        for k in mine:
            entry = self.log[k]
            if len(entry) == 5:
                total += entry[4] - entry[3]
                continue
            _, ops, _, t, _, f = entry
            for _, d in ops:
                if d > 0:
                    total += (t + d * f) - t
                    t += d * f
        return total


def rank_breakdown(log: RankLog, step_s: float) -> dict[str, float]:
    """One rank's compute, exposed communication, idle rest and each category's time."""
    compute = log.compute_spans()
    comm = log.start_s[~log.is_compute], log.end_s[~log.is_compute]
    busy_s = union_length_arr(*compute)
    exposed_s = exposed_length_arr(*comm, *compute)
    out = {
        "compute": busy_s,
        "exposed_comm": exposed_s,
        "bubble": max(step_s - busy_s - exposed_s, 0.0),
    }
    for i, cat in enumerate(PARTS):
        out[cat] = log.part_s(i)
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
    by_log: dict[int, RankLog] = {}  # a mirrored rank shares its mirror's log (dualpipe_mirror)
    for r in ranks:
        if not isinstance(r, VectorRank) and id(r.log) not in by_log:
            by_log[id(r.log)] = RankLog.of(r.log)
    logs = {id(r): by_log[id(r.log)] for r in ranks if not isinstance(r, VectorRank)}
    step_s = max(
        (r.last_end_s() if isinstance(r, VectorRank) else logs[id(r)].last_end_s() for r in ranks),
        default=0.0,
    )
    per_rank: list[dict[str, float]] = []
    owners: list[Rank] = []  # the (vector) rank of each entry of per_rank
    for r in ranks:
        if isinstance(r, VectorRank):
            parts = r.breakdowns(step_s)
        else:
            parts = [rank_breakdown(logs[id(r)], step_s)]
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
