"""Full fidelity as one SimPy process set per pipeline stage: a *vector rank* whose every
quantity is a numpy vector over the stage's ranks (its *members*).

Why: under full fidelity the ranks of one stage run the same program (same ops, same
collectives, in the same order) and differ only in their durations (each EP group's routing
draw, each member's received copies, fault factors). One SimPy process per rank costs ~10⁴
events per rank per DeepSeek-V3 step (2·10⁷ at 2,048 GPUs, 651 s of CPU); one process set per
stage costs the events of a symmetric run, each op a few numpy operations on the members.

Legend: ``M`` members (the stage's ranks, in stage order q = 0 … M−1).

How time works: each process carries per-member ready times (``_Proc.ready``); SimPy time is
the latest member's (every member time is ≤ ``env.now``). An op on a stream starts, per member,
at max(ready, the stream free) and ends a member duration later; the process then waits in
SimPy until its latest member is done. A collective's rendezvous is a max over the members of
each group (EP, TP, CP, DP, EDP: all inside a stage), with the group's slowest link factor
(``moesim.sim.faults``). A pipeline send carries its per-member end times to the receiving
stage (``notify``), whose members wait each for its own sender.

Approximations against the per-rank engine (``moesim.sim.engine``), measured in
tests/sim/test_vector_engine.py (DeepSeek-V3 on 256 GPUs, zipf routing, 2026-12-04: the same
step bit for bit, exposed communication +2.9%, ``pp_comm`` +19% from the sends' link sharing):

- **order of overlapped chunks**: the two chunks of a DualPipe (or EP-overlap) pair take the
  compute stream in the order their latest members ask for it, the same order for every member
  (per rank, each member's own times set it);
- **link sharing**: concurrent transfers share a link class (processor sharing) in SimPy time,
  i.e. as the latest members overlap; each member's transfer then takes its alone time plus
  the delay the sharing added at that level;
- **SM slowdown**: a compute op is stretched where, for that member, it starts between a
  communication's issue (pair) or start (EP transfer) and its end; a communication whose
  transfer is still running in SimPy time counts as in flight.

The step's per-rank breakdown is read from the vector log with numpy (``breakdowns``);
``member_ranks`` expands it into plain ``Rank`` logs for the Chrome trace.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import simpy
from simpy.events import Condition

from moesim.sim.engine import COMM_CATEGORIES, LINK_CLASSES, Rank, Stream, process_waiting_on
from moesim.sim.shared_link import SharedLink
from moesim.sim.vector_groups import Partition, group_kind

Vec = np.ndarray


def _times(ev: simpy.Event) -> Vec | None:
    """Per-member times an event carries (a send, a finished process, all of a condition's)."""
    vt = getattr(ev, "_vt", None)
    if vt is None and isinstance(ev, Condition):
        for e in ev._events:
            t = _times(e)
            if t is not None:
                vt = t if vt is None else np.maximum(vt, t)
    return vt


class _Proc:
    """A process's per-member ready times."""

    __slots__ = ("proc", "ready")

    def __init__(self, ready: Vec):
        self.ready = ready
        self.proc: simpy.Process | None = None


@dataclass
class VectorDraw:
    """One MoE layer's load for one microbatch, per member: what ``MoEDraw`` is per rank."""

    expert_copies: Vec
    dispatch_s: Vec
    combine_s: Vec
    forward_ops: list[tuple[str, Vec]]  # the experts and their element-wise kernels
    backward_ops: list[tuple[str, Vec]]

    def expert_ops(self, backward: bool) -> list[tuple[str, Vec]]:
        return self.backward_ops if backward else self.forward_ops


class VectorRank:
    """The ranks of one pipeline stage as one: the ``Rank`` interface (``compute``,
    ``compute_ops``, ``comm``, ``start``, ``notify``) on per-member vectors."""

    def __init__(
        self,
        env: simpy.Environment,
        gpu: int,
        label: str,
        members: list[int],
        labels: list[str],
        group_of: Callable[[str, int], tuple[int, ...]],
        comm_sm_slowdown: float,
        compute_factor: Vec | float,
        link_factor: dict[str, Vec],
    ):
        self.env, self.gpu, self.label = env, gpu, label
        self.members, self.labels = members, labels
        self.size = len(members)
        self._group_of = group_of
        self.comm_sm_slowdown = comm_sm_slowdown
        self.compute_factor = compute_factor
        self.link_factor = link_factor
        self.current: _Proc | None = None
        self.compute_free = np.zeros(self.size)
        self.compute_stream = Stream(env)
        self.streams: dict[str, tuple[Stream, list[Vec]]] = {}
        self.links = {c: SharedLink(env) for c in LINK_CLASSES}
        self.ep_flight: list[list] = []  # [issue, end or None] of EP collectives
        self._partitions: dict[tuple[str, int], Partition] = {}
        self._slow: dict[tuple[str, int, str], Vec] = {}
        # the log: (stream, name or the hold's ops, category, factor) and start / end vectors
        self.kinds: list[tuple] = []
        self.starts: list[Vec] = []
        self.ends: list[Vec] = []

    # -- processes ------------------------------------------------------------------------
    def start(self, gen) -> simpy.Process:
        """Launch a generator; it starts from the caller's ready times (0 at the top)."""
        cur = self.current
        st = _Proc(cur.ready.copy() if cur is not None else np.zeros(self.size))
        st.proc = self.env.process(self._drive(gen, st))
        return st.proc

    def issue(self, gen) -> simpy.Event:
        """Launch the collective ``gen`` with its issue done now (``engine.issue_now``): its
        first step runs as its own process, from the caller's ready times."""
        cur = self.current
        st = _Proc(cur.ready.copy() if cur is not None else np.zeros(self.size))
        self.current = st
        try:
            first = gen.send(None)
        except StopIteration:  # nothing to transfer
            done = self.env.event()
            done._vt = st.ready  # type: ignore[attr-defined]
            done.succeed()
            return done
        finally:
            self.current = cur
        drive = self._drive(gen, st, first)
        next(drive)  # to its wait on ``first``
        st.proc = process_waiting_on(self.env, drive, first)
        return st.proc

    def _drive(self, gen: Generator, st: _Proc, first: simpy.Event | None = None):
        """Run ``gen`` as process ``st``: what it waits on brings per-member times (``first``:
        what an issued ``gen`` already waits on)."""
        value = None
        send = gen.send
        if first is not None:
            value = yield first
            vt = _times(first)
            if vt is not None:
                st.ready = np.maximum(st.ready, vt)
        while True:
            self.current = st
            try:
                ev = send(value)
            except StopIteration as stop:
                st.proc._vt = st.ready  # type: ignore[union-attr]
                return stop.value
            value = yield ev
            vt = _times(ev)
            if vt is not None:
                st.ready = np.maximum(st.ready, vt)

    def notify(self, ev: simpy.Event) -> None:
        """Fire ``ev`` (a pipeline send's arrival) with the members' current times."""
        ev._vt = self.current.ready.copy()  # type: ignore[union-attr]
        ev.succeed()

    def _wait_until(self, t_s: float):
        delay = t_s - self.env.now
        return self.env.timeout(delay if delay > 0 else 0.0)

    # -- compute ----------------------------------------------------------------------------
    def compute(self, name: str, duration_s, category: str = "compute"):
        yield from self.compute_ops([(name, duration_s)], category)

    def compute_ops(self, ops, category: str = "compute", busy: list | None = None, total_s=None):
        """Consecutive kernels in one hold of each member's compute stream; stretched by the
        SM slowdown where a communication is in flight for that member (``busy``: the pair's
        communications, else the rank's EP transfers). ``total_s`` as ``Rank.compute_ops``."""
        total = sum(d for _, d in ops) if total_s is None else total_s
        if not np.any(np.asarray(total) > 0):
            return
        st = self.current
        wait = self.compute_stream.acquire()  # in SimPy, in request order (Rank's FIFO)
        if wait is not None:
            yield wait
        start = np.maximum(st.ready, self.compute_free)
        flight = self.ep_flight if busy is None else busy
        f: Vec | float = self.compute_factor
        if flight and self.comm_sm_slowdown != 1.0:
            lo = start.min()
            flight[:] = [e for e in flight if e[1] is None or e[1].max() > lo]
            hit = np.zeros(self.size, dtype=bool)
            for issue, end in flight:
                inside = issue <= start
                if end is not None:
                    inside &= start < end
                hit |= inside
            if hit.any():
                f = np.where(hit, self.comm_sm_slowdown, 1.0) * self.compute_factor
        end = start + total * f
        self.compute_free = st.ready = end
        self.kinds.append(("compute", ops, category, f))
        self.starts.append(start)
        self.ends.append(end)
        yield self._wait_until(end.max())
        self.compute_stream.release()

    # -- communication ------------------------------------------------------------------------
    def _partition(self, kind: str, size: int) -> Partition:
        key = (kind, size)
        part = self._partitions.get(key)
        if part is None:
            groups = [self._group_of(kind, g) for g in self.members]
            if any(len(g) != size for g in groups):
                raise ValueError(f"vector engine: {kind} groups are not of {size} members")
            part = self._partitions[key] = Partition(np.array([min(g) for g in groups]))
        return part

    def comm(
        self,
        stream: str,
        name: str,
        category: str,
        alone_s,
        link: str,
        group_key: tuple | None = None,
        group_size: int = 1,
        busy: list | None = None,
    ):
        """A collective (or a send) on ``stream``: each group starts at its last member's
        arrival, then in stream order; the transfer shares ``link`` (see the module doc)."""
        if not np.any(np.asarray(alone_s) > 0):
            return
        st = self.current
        entry = flight = None  # from issue to end (``Rank.comm``)
        if busy is not None and self.comm_sm_slowdown != 1.0:
            entry = [st.ready, None]
            busy.append(entry)
        if stream == "ep" and self.comm_sm_slowdown != 1.0:  # else nothing reads them
            flight = [st.ready, None]
            self.ep_flight.append(flight)
        arrive = st.ready
        slow = self.link_factor.get(link)
        if group_key is not None and group_size > 1:
            kind = group_kind(stream, name)
            part = self._partition(kind, group_size)
            arrive = part.max(arrive)
            if slow is not None:
                key = (kind, group_size, link)
                if key not in self._slow:
                    self._slow[key] = part.max(slow)
                slow = self._slow[key]
        if slow is not None:
            alone_s = alone_s * slow
        pair = self.streams.get(stream)
        if pair is None:
            pair = self.streams[stream] = (Stream(self.env), [np.zeros(self.size)])
        fifo, free = pair
        wait = fifo.acquire()
        if wait is not None:
            yield wait
        start = np.maximum(arrive, free[0])
        alone_max = float(np.max(alone_s))
        t0 = self.env.now
        yield from self.links[link].transfer(alone_max)
        delay = max(self.env.now - t0 - alone_max, 0.0)
        end = start + alone_s + delay
        if flight is not None:
            flight[1] = end
        if entry is not None:
            entry[1] = end
        free[0] = end
        st = self.current  # the transfer's own process
        st.ready = np.maximum(st.ready, end)
        fifo.release()
        self.kinds.append((stream, name, category, None))
        self.starts.append(start)
        self.ends.append(end)

    # -- views of a DualPipe pair --------------------------------------------------------------
    def pair_views(self) -> tuple[VectorView, VectorView]:
        """(forward view, backward view) for one overlapped pair (``dualpipe.pair_views``)."""
        busy: list = []
        return VectorView(self, {}, busy), VectorView(self, {"pp": "pp_bwd"}, busy)

    # -- result -----------------------------------------------------------------------------
    def last_end_s(self) -> float:
        return max((float(e.max()) for e in self.ends), default=0.0)

    def breakdowns(self, step_s: float) -> list[dict[str, float]]:
        """Each member's ``run.rank_breakdown``: compute, exposed communication, idle rest and
        each category's total, from the log as (entries × members) arrays."""
        m = self.size
        if not self.kinds:
            zero = dict.fromkeys(("compute", "exposed_comm", *COMM_CATEGORIES, "optimizer"), 0.0)
            return [{**zero, "bubble": step_s} for _ in range(m)]
        start = np.stack([np.broadcast_to(s, m) for s in self.starts])  # (entries, M)
        end = np.stack([np.broadcast_to(e, m) for e in self.ends])
        is_compute = np.array([k[0] == "compute" for k in self.kinds])
        span = end - start
        busy = span[is_compute].sum(axis=0)  # one compute stream: its holds never overlap
        both = _union_length(start, end)
        exposed = both - busy
        cats = np.array([k[2] for k in self.kinds])
        per_cat = {c: span[cats == c].sum(axis=0) for c in (*COMM_CATEGORIES, "optimizer")}
        out = []
        for i in range(m):
            b = {
                "compute": float(busy[i]),
                "exposed_comm": float(exposed[i]),
                "bubble": max(step_s - float(busy[i]) - float(exposed[i]), 0.0),
            }
            for c, v in per_cat.items():
                b[c] = float(v[i])
            out.append(b)
        return out

    def member_ranks(self) -> list[Rank]:
        """One plain ``Rank`` per member with its log (for the Chrome trace)."""
        out = []
        for i, (g, label) in enumerate(zip(self.members, self.labels, strict=True)):
            r = Rank(self.env, g, label)
            for (stream, what, category, f), s, e in zip(
                self.kinds, self.starts, self.ends, strict=True
            ):
                a, b = float(np.broadcast_to(s, self.size)[i]), float(e[i])
                if stream != "compute":
                    r.log.append((stream, what, category, a, b))
                    continue
                fi = float(np.broadcast_to(f, self.size)[i])
                ops = [(n, float(np.broadcast_to(d, self.size)[i])) for n, d in what]
                r.record_hold(ops, category, a, fi)
            out.append(r)
        return out


def _union_length(start: Vec, end: Vec) -> Vec:
    """Per column, the length of the union of the intervals [start, end) (``union_length_s``)."""
    order = np.argsort(start, axis=0, kind="stable")
    s = np.take_along_axis(start, order, axis=0)
    e = np.take_along_axis(end, order, axis=0)
    reach = np.maximum.accumulate(e, axis=0)
    before = np.vstack([np.full((1, s.shape[1]), -np.inf), reach[:-1]])
    return np.maximum(e - np.maximum(s, before), 0.0).sum(axis=0)


class VectorView:
    """The vector rank as one chunk of an overlapped pair sees it (``dualpipe.ChunkView``):
    communication streams renamed by ``alias``, compute slowed while the pair communicates."""

    def __init__(self, rank: VectorRank, alias: dict[str, str], busy: list):
        self.rank, self.alias, self.busy = rank, alias, busy
        self.env, self.gpu, self.label = rank.env, rank.gpu, rank.label

    def start(self, gen) -> simpy.Process:
        return self.rank.start(gen)

    def issue(self, gen) -> simpy.Event:
        return self.rank.issue(gen)

    def notify(self, ev: simpy.Event) -> None:
        self.rank.notify(ev)

    def compute(self, name: str, duration_s, category: str = "compute"):
        yield from self.rank.compute_ops([(name, duration_s)], category, self.busy)

    def compute_ops(self, ops, category: str = "compute", total_s=None):
        return self.rank.compute_ops(ops, category, self.busy, total_s)

    def comm(self, stream: str, name: str, category: str, alone_s, link: str,
             group_key: tuple | None = None, group_size: int = 1):  # fmt: skip
        s = self.alias.get(stream, stream)
        yield from self.rank.comm(
            s, name, category, alone_s, link, group_key, group_size, self.busy
        )


def vector_applies(s) -> bool:
    """Where the vector engine runs full fidelity (``Scenario`` ``s``): pretraining steps
    without expert tensor parallelism (etp's collectives are sized by each rank's draw), when
    the stage's groups time alike (``vector_stage.stages_alike``); elsewhere one SimPy process
    set per rank."""
    return s.workload.stage == "pretrain" and s.parallel.etp == 1
