"""The SimPy engine: ranks with a compute stream and communication streams, links shared by
concurrent transfers, and rendezvous for collectives.

Event granularity: one SimPy timeout per op (a fused kernel group such as "attention forward of
one layer for one microbatch"), never per token or per packet. An op's duration comes from the
cost model or the collective timer before it is scheduled, so the event loop only orders ops;
that keeps a 2048-GPU DeepSeek-V3 step (about 10⁵ ops under symmetric fidelity) under a second.

- **Streams** are capacity-1 FIFO resources (``Stream``): a rank's compute stream runs one
  kernel at a time; each communication stream (``tp``, ``ep``, ``pp``, ``dp``, ``cp``) runs its
  collectives in issue order, concurrently with compute and with the other streams, as CUDA
  streams do.
- **Links** of a rank (``nvlink``, ``network``) are processor-sharing servers: a collective
  brings the seconds it would take alone (from the flow or alpha–beta timer), and concurrent
  collectives on the same link class share it equally, so a gradient reduce-scatter slows an
  all-to-all that crosses the same NICs, and both finish later than alone.
- **Rendezvous** (full fidelity only): a collective starts when every member of its group has
  issued it, so a straggler's delay reaches its whole group. Under symmetric fidelity one rank
  stands for its group and the straggler is drawn statistically (the most loaded rank's time).

- **SMs of communication kernels**: an EP dispatch or combine (the ``ep`` stream) runs on SMs
  (DeepEP's kernels: ``parallel.moe_comm_sms``); a kernel that starts on the compute stream
  while one is in flight runs ``comm_sm_slowdown`` times longer (SMs / (SMs − comm SMs)),
  decided at its start, as DualPipe's chunk pairs do (``moesim.sim.dualpipe``).

Every op is logged on its rank: a collective or a single kernel as an interval
``(stream, name, category, start_s, end_s)``, a hold of the compute stream by several kernels
as one ``Hold`` (its kernels' intervals are contiguous). The step's time breakdown is read from
the log (a hold is one span: a 2048-GPU DeepSeek-V3 step has 3·10⁵ kernels in 1.1·10⁵ holds);
``Rank.intervals`` expands the holds into one interval per kernel for the Chrome trace.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import simpy
from simpy.events import PENDING

from moesim.sim.shared_link import SharedLink, _Job

# d2h / h2d: activation offload to host memory, one copy stream each way over PCIe
COMM_STREAMS = ("tp", "ep", "pp", "dp", "cp", "d2h", "h2d")
LINK_CLASSES = ("nvlink", "network", "pcie_d2h", "pcie_h2d")
# the breakdown's communication parts, one per kind of collective (``moesim.sim.breakdown``)
COMM_CATEGORIES = ("all_to_all", "tp_comm", "cp_comm", "dp_comm", "pp_comm", "offload")
Interval = tuple[str, str, str, float, float]  # stream, op name, category, start_s, end_s
# "compute", the kernels (name, seconds alone), category, start_s, end_s, stretch factor; end_s
# is the last kernel's end as the expanded intervals have it (each one starts where the last
# ended, at start_s + Σ seconds·factor)
Hold = tuple[str, list[tuple[str, float]], str, float, float, float]


class Stream:
    """A FIFO stream (a capacity-1 resource on SimPy events). Unlike ``simpy.Resource``, an
    uncontended acquire costs no event: most ops find their stream free, and at 10⁵ ops per
    step the saved events are most of the run time."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.busy = False
        self.waiting: deque[simpy.Event] = deque()

    def acquire(self) -> simpy.Event | None:
        """None when the stream was free (now held), else an event that fires when it is."""
        if not self.busy:
            self.busy = True
            return None
        ev = self.env.event()
        self.waiting.append(ev)
        return ev

    def release(self) -> None:
        if self.waiting:
            self.waiting.popleft().succeed()  # ownership passes straight to the next op
        else:
            self.busy = False


class Rendezvous:
    """Named barriers: ``arrive(key, size, factor)`` returns an event that fires when ``size``
    members have arrived under ``key``; its value is the largest ``factor`` they brought (the
    slowest member's link factor, ``moesim.sim.faults``)."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self._open: dict[tuple, tuple[simpy.Event, list[float]]] = {}

    def arrive(self, key: tuple, size: int, factor: float = 1.0) -> simpy.Event:
        """The barrier event of ``key``; it fires, with the slowest member's link factor, once
        ``size`` members arrived."""
        entry = self._open.get(key)
        if entry is None:  # the first member (setdefault would build an event for every one)
            entry = self._open[key] = (self.env.event(), [0, 1.0])
        ev, state = entry
        state[0] += 1
        if factor > state[1]:
            state[1] = factor
        if state[0] == size:
            del self._open[key]
            ev.succeed(state[1])
        return ev


@dataclass
class Rank:
    """One simulated GPU: its streams, its links and what it did."""

    env: simpy.Environment
    gpu: int
    label: str
    rendezvous: Rendezvous | None = None
    log: list[Interval | Hold] = field(default_factory=list)
    comm_sm_slowdown: float = 1.0  # compute time factor while an EP all-to-all holds SMs
    compute_factor: float = 1.0  # a slow GPU: every kernel this many times as long (faults)
    link_factor: dict[str, float] = field(default_factory=dict)  # a slow link, per link class
    mirror_of: int | None = None  # not simulated: replays this GPU's log (dualpipe_mirror)

    def __post_init__(self) -> None:
        self.ep_in_flight = 0  # EP dispatches/combines issued and not ended (they hold SMs)
        self.compute_stream = Stream(self.env)
        self.streams = {s: Stream(self.env) for s in COMM_STREAMS}
        self.links = {c: SharedLink(self.env) for c in LINK_CLASSES}

    @property
    def intervals(self) -> list[Interval]:
        """Every op as ``(stream, name, category, start_s, end_s)``, holds expanded into their
        kernels (positive times only), in log order."""
        out: list[Interval] = []
        for entry in self.log:
            if len(entry) == 5:
                out.append(entry)  # type: ignore[arg-type]
                continue
            _, ops, category, t, _, f = entry
            for name, d in ops:  # type: ignore[union-attr]
                if d > 0:
                    out.append(("compute", name, category, t, t + d * f))
                    t += d * f
        return out

    @intervals.setter
    def intervals(self, value: list[Interval]) -> None:
        self.log = list(value)

    def record_hold(
        self, ops: list[tuple[str, float]], category: str, start_s: float, factor: float
    ) -> None:
        """Log a hold of the compute stream by ``ops`` that began at ``start_s``, each kernel
        stretched by ``factor``."""
        t = start_s
        for _, d in ops:
            if d > 0:
                t += d * factor
        self.log.append(("compute", ops, category, start_s, t, factor))

    def compute(self, name: str, duration_s: float, category: str = "compute"):
        """Run a kernel on the compute stream."""
        if duration_s <= 0:
            return
        wait = self.compute_stream.acquire()
        if wait is not None:
            yield wait
        start = self.env.now
        duration_s *= self.compute_factor
        if self.ep_in_flight:
            duration_s *= self.comm_sm_slowdown
        yield self.env.timeout(duration_s)
        self.compute_stream.release()
        self.log.append(("compute", name, category, start, self.env.now))

    def compute_ops(
        self,
        ops: list[tuple[str, float]],
        category: str = "compute",
        busy: list[int] | None = None,
        total_s: float | None = None,
    ):
        """Run consecutive kernels with one hold of the compute stream (one event for all);
        each still gets its own interval in the trace. Slowed by the SMs of communication in
        flight: the rank's EP transfers, or with ``busy`` (a DualPipe pair's counter,
        ``dualpipe.ChunkView``) the pair's communications. ``total_s``: the kernels' summed
        seconds, when the caller has it (``LayerRunner``'s programs add them once)."""
        if total_s is None:
            total_s = sum(d for _, d in ops)
        if total_s <= 0:
            return
        wait = self.compute_stream.acquire()
        if wait is not None:
            yield wait
        in_flight = self.ep_in_flight if busy is None else busy[0]
        f = (self.comm_sm_slowdown if in_flight else 1.0) * self.compute_factor
        t = self.env.now
        yield self.env.timeout(total_s * f)
        self.compute_stream.release()
        self.record_hold(ops, category, t, f)

    def comm(
        self,
        stream: str,
        name: str,
        category: str,
        alone_s: float,
        link: str,
        group_key: tuple | None = None,
        group_size: int = 1,
        busy: list[int] | None = None,
    ):
        """Run a collective on a communication stream: (full fidelity) wait for the group,
        then for the stream, then share the link for ``alone_s`` seconds of exclusive use.
        An EP collective holds its SMs from issue to end (a DeepEP kernel is launched when
        issued and spins until its peers and its data arrive): it counts in the rank's
        ``ep_in_flight``, or in ``busy`` (a DualPipe pair's counter) for a chunk of a pair.

        The group comes first: a rank that held its stream while waiting for its peers would
        deadlock when two collectives reach the same stream in different orders on different
        ranks (DualPipe's overlapped forward and backward chunks issue their all-to-alls in an
        order set by each rank's own routing load)."""
        if alone_s <= 0:
            return
        if busy is not None:
            busy[0] += 1
        holds_sms = stream == "ep"
        self.ep_in_flight += holds_sms
        slow = self.link_factor.get(link, 1.0) if self.link_factor else 1.0
        if self.rendezvous is not None and group_key is not None and group_size > 1:
            slow = yield self.rendezvous.arrive(group_key, group_size, slow)
        alone_s *= slow
        st = self.streams[stream]
        wait = st.acquire()
        if wait is not None:
            yield wait
        start = self.env.now
        shared = self.links[link]
        if not shared.jobs:  # SharedLink.transfer's idle path, inline: most transfers take it
            job = _Job(alone_s, None)
            shared.jobs.append(job)
            shared.last_s = start
            yield self.env.timeout(alone_s)
            if job.done is None:  # never shared
                shared.jobs.remove(job)
                shared.last_s = self.env.now
            else:
                yield job.done
        else:
            yield from shared.transfer(alone_s)
        self.ep_in_flight -= holds_sms
        st.release()
        self.log.append((stream, name, category, start, self.env.now))
        if busy is not None:
            busy[0] -= 1

    def start(self, gen) -> simpy.Process:
        """Launch a generator concurrently (an asynchronous collective)."""
        return self.env.process(gen)

    def issue(self, gen) -> simpy.Event:
        """Launch the collective ``gen`` with its issue done now (``issue_now``)."""
        return issue_now(self.env, gen)

    def notify(self, ev: simpy.Event) -> None:
        """Fire ``ev`` (a pipeline send's arrival; the vector engine's carries member times)."""
        ev.succeed()


def issue_now(env: simpy.Environment, gen) -> simpy.Event:
    """Run the collective ``gen`` up to its first wait now, then on as a process.

    A process started with ``env.process`` first runs at its Initialize event, after the
    caller's next op has begun. A kernel launched right after an all-to-all on another stream
    (the shared experts after the dispatch) would then decide its SM slowdown before the
    all-to-all counted as in flight, and be slowed or not depending on whether it waited for
    the compute stream. On a GPU the all-to-all's kernel is issued first and holds its SMs from
    its start (DeepEP: ``Buffer.num_sms``; DeepSeek-V3 §3.2.2), so it is issued first here too.
    Returns the event the caller waits on for the collective's end."""
    try:
        first = next(gen)
    except StopIteration:  # nothing to transfer
        done = env.event()
        done.succeed()
        return done
    return process_waiting_on(env, gen, first)


def process_waiting_on(env: simpy.Environment, gen, first: simpy.Event) -> simpy.Process:
    """The SimPy process of ``gen``, a generator that already ran to its first wait
    (``first``): what ``env.process`` builds, less its Initialize event, whose one job (that
    first step) is done. It resumes ``gen`` when ``first`` fires, as any process does.
    (SimPy's ``Process`` has no public way in; these are the fields its ``__init__`` and
    Initialize set.)"""
    assert first.callbacks is not None, "the first wait has not fired yet"
    proc = simpy.Process.__new__(simpy.Process)
    proc.env = env
    proc.callbacks = []
    proc._value = PENDING
    proc._generator = gen
    proc._target = first
    first.callbacks.append(proc._resume)
    return proc


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (``gc``) for the block, as it was before afterwards
    (nested uses keep the outer state)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_to_completion(env: simpy.Environment, procs: dict[int, simpy.Process]) -> None:
    """Run the simulation and check every rank's program finished: one still waiting when no
    event is left is a deadlock in the simulator (peers that never meet), never a result.

    Python's cyclic garbage collector is paused while the events run: the loop allocates an
    event, a log entry or a generator per op (10⁵ per large step), which sets off a young
    collection every 700 allocations and, as the log grows, full ones over it, while reference
    counting frees all of that as it goes. On a symmetric 2048-GPU DeepSeek-V3 step the
    collector ran 269 times and found 8 objects to free, for about 8% of the step's CPU time
    (2026-12-04, this machine). It is restored (not forced) afterwards."""
    with cyclic_gc_paused():
        env.run()
    stuck = sorted(g for g, p in procs.items() if p.is_alive)
    if stuck:
        raise RuntimeError(
            f"simulator deadlock: the programs of GPUs {stuck[:8]}{'…' if len(stuck) > 8 else ''} "
            "never finished (a collective whose members never all arrived); please report it"
        )
