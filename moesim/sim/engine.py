"""The SimPy engine: ranks with a compute stream and communication streams, links shared by
concurrent transfers, and rendezvous for collectives.

Event granularity: one SimPy timeout per op (a fused kernel group such as "attention forward of
one layer for one microbatch"), never per token or per packet. An op's duration comes from the
cost model or the collective timer before it is scheduled, so the event loop only orders ops;
that keeps a 2048-GPU DeepSeek-V3 step (about 10⁵ ops under symmetric fidelity) near a second.

- **Streams** are ``simpy.Resource(capacity=1)``: a rank's compute stream runs one kernel at a
  time; each communication stream (``tp``, ``ep``, ``pp``, ``dp``) runs its collectives in
  issue order, concurrently with compute and with the other streams, as CUDA streams do.
- **Links** of a rank (``nvlink``, ``network``) are processor-sharing servers: a collective
  brings the seconds it would take alone (from the flow or alpha–beta timer), and concurrent
  collectives on the same link class share it equally, so a gradient reduce-scatter slows an
  all-to-all that crosses the same NICs, and both finish later than alone.
- **Rendezvous** (full fidelity only): a collective starts when every member of its group has
  issued it, so a straggler's delay reaches its whole group. Under symmetric fidelity one rank
  stands for its group and the straggler is drawn statistically (the most loaded rank's time).

Every op appends ``(stream, name, category, start_s, end_s)`` to its rank's ``intervals``; the
step's time breakdown and the Chrome trace are both read from them.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import simpy

COMM_STREAMS = ("tp", "ep", "pp", "dp")
LINK_CLASSES = ("nvlink", "network")
Interval = tuple[str, str, str, float, float]  # stream, op name, category, start_s, end_s


class SharedLink:
    """Processor sharing: n concurrent transfers each progress at 1/n of the link."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.remaining_s: dict[simpy.Event, float] = {}
        self.last_s = 0.0
        self.generation = 0

    def transfer(self, alone_s: float) -> Generator[simpy.Event, Any, None]:
        if alone_s <= 0:
            return
        done = self.env.event()
        self._advance()
        self.remaining_s[done] = alone_s
        self._reschedule()
        yield done

    def _advance(self) -> None:
        n = len(self.remaining_s)
        if n:
            step = (self.env.now - self.last_s) / n
            for k in self.remaining_s:
                self.remaining_s[k] -= step
        self.last_s = self.env.now

    def _reschedule(self) -> None:
        self.generation += 1
        if not self.remaining_s:
            return
        gen = self.generation
        delay = max(min(self.remaining_s.values()), 0.0) * len(self.remaining_s)
        timer = self.env.timeout(delay)
        timer.callbacks.append(lambda _ev, gen=gen: self._on_timer(gen))

    def _on_timer(self, gen: int) -> None:
        if gen != self.generation:
            return
        self._advance()
        tol = 1e-12 * max(1.0, self.env.now)
        for k in [k for k, v in self.remaining_s.items() if v <= tol]:
            del self.remaining_s[k]
            k.succeed()
        self._reschedule()


class Rendezvous:
    """Named barriers: ``arrive(key, size)`` returns an event that fires when ``size`` members
    have arrived under ``key``."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self._open: dict[tuple, tuple[simpy.Event, list[int]]] = {}

    def arrive(self, key: tuple, size: int) -> simpy.Event:
        ev, count = self._open.setdefault(key, (self.env.event(), [0]))
        count[0] += 1
        if count[0] == size:
            del self._open[key]
            ev.succeed()
        return ev


@dataclass
class Rank:
    """One simulated GPU: its streams, its links and what it did."""

    env: simpy.Environment
    gpu: int
    label: str
    rendezvous: Rendezvous | None = None
    intervals: list[Interval] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.compute_stream = simpy.Resource(self.env, capacity=1)
        self.streams = {s: simpy.Resource(self.env, capacity=1) for s in COMM_STREAMS}
        self.links = {c: SharedLink(self.env) for c in LINK_CLASSES}

    def compute(self, name: str, duration_s: float, category: str = "compute"):
        """Run a kernel on the compute stream."""
        if duration_s <= 0:
            return
        with self.compute_stream.request() as req:
            yield req
            start = self.env.now
            yield self.env.timeout(duration_s)
        self.intervals.append(("compute", name, category, start, self.env.now))

    def comm(
        self,
        stream: str,
        name: str,
        category: str,
        alone_s: float,
        link: str,
        group_key: tuple | None = None,
        group_size: int = 1,
    ):
        """Run a collective on a communication stream: wait for the stream, (full fidelity)
        for the group, then share the link for ``alone_s`` seconds of exclusive use."""
        if alone_s <= 0:
            return
        with self.streams[stream].request() as req:
            yield req
            start = self.env.now
            if self.rendezvous is not None and group_key is not None and group_size > 1:
                yield self.rendezvous.arrive(group_key, group_size)
            yield from self.links[link].transfer(alone_s)
        self.intervals.append((stream, name, category, start, self.env.now))

    def start(self, gen) -> simpy.Process:
        """Launch a generator concurrently (an asynchronous collective)."""
        return self.env.process(gen)


def union_length_s(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def exposed_length_s(comm: list[tuple[float, float]], compute: list[tuple[float, float]]) -> float:
    """Length of the union of ``comm`` spans not covered by any ``compute`` span."""
    both = union_length_s(comm + compute)
    return both - union_length_s(compute)
