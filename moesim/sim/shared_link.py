"""A link shared by concurrent transfers (processor sharing): n transfers on it each progress at
1/n of its bandwidth, so a gradient reduce-scatter slows an all-to-all that crosses the same
NICs and both finish later than alone (``moesim.sim.engine``'s links)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy


class _Job:
    __slots__ = ("done", "remaining_s")

    def __init__(self, remaining_s: float, done: simpy.Event | None):
        self.remaining_s = remaining_s
        self.done = done


class SharedLink:
    """Processor sharing: n concurrent transfers each progress at 1/n of the link.

    A transfer that finds the link idle runs on a plain timeout (one event). If another arrives
    meanwhile, both get completion events driven by a shared timer, rescheduled at every arrival
    and departure; the first one's timeout then fires early (sharing only delays it) and it goes
    on to wait for its completion event.
    """

    def __init__(self, env: simpy.Environment):
        self.env = env
        self.jobs: list[_Job] = []
        self.last_s = 0.0
        self.generation = 0

    def transfer(self, alone_s: float) -> Generator[simpy.Event, Any, None]:
        if alone_s <= 0:
            return
        if not self.jobs:
            job = _Job(alone_s, None)
            self.jobs.append(job)
            self.last_s = self.env.now
            yield self.env.timeout(alone_s)
            if job.done is None:  # never shared
                self.jobs.remove(job)
                self.last_s = self.env.now
                return
            yield job.done
            return
        self._advance()
        for other in self.jobs:
            if other.done is None:
                other.done = self.env.event()
        job = _Job(alone_s, self.env.event())
        self.jobs.append(job)
        self._reschedule()
        yield job.done

    def _advance(self) -> None:
        n = len(self.jobs)
        if n:
            step = (self.env.now - self.last_s) / n
            for job in self.jobs:
                job.remaining_s -= step
        self.last_s = self.env.now

    def _reschedule(self) -> None:
        self.generation += 1
        if not self.jobs:
            return
        gen = self.generation
        delay = max(min(j.remaining_s for j in self.jobs), 0.0) * len(self.jobs)
        timer = self.env.timeout(delay)
        timer.callbacks.append(lambda _ev, gen=gen: self._on_timer(gen))

    def _on_timer(self, gen: int) -> None:
        if gen != self.generation:
            return
        self._advance()
        tol = 1e-12 * max(1.0, self.env.now)
        finished = [j for j in self.jobs if j.remaining_s <= tol]
        for job in finished:
            self.jobs.remove(job)
            assert job.done is not None
            job.done.succeed()
        self._reschedule()
