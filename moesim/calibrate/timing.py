"""The timer: warm-up, device synchronisation, the median of many repeats on fresh inputs.

How one op is timed (``Timer.time(fn, make_inputs)``):

1. ``make_inputs()`` builds a pool of distinct random input sets (never zeros: sparse or
   constant data can take fast paths and compress in caches); the timed repeats rotate through
   the pool, so no repeat runs on the inputs of the one before it, and building inputs is never
   inside the timed region.
2. Warm-up calls (allocator, cuBLAS heuristics, CPU thread pools), then a first estimate of the
   time of one call sets the number of repeats: as many as fit in ``budget_s``, between
   ``min_repeats`` and ``max_repeats``.
3. CUDA: each repeat is bracketed by two CUDA events recorded on the current stream, with one
   ``torch.cuda.synchronize()`` before the first and after the last; the events measure the
   GPU's own time, free of host jitter. CPU: ``time.perf_counter`` around each call (CPU ops
   are synchronous).
4. The result is the median with the 10th and 90th percentiles: one page fault or a neighbour's
   burst moves the mean, not the median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    median_s: float
    p10_s: float
    p90_s: float
    repeats: int


def summarize(samples_s: Sequence[float]) -> Timing:
    """Median and 10th/90th percentiles (linear interpolation) of timed samples."""
    if not samples_s:
        raise ValueError("no samples to summarise")
    xs = sorted(samples_s)

    def pct(q: float) -> float:
        pos = q * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])

    return Timing(statistics.median(xs), pct(0.10), pct(0.90), len(xs))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class Timer:
    """Times callables on ``device`` ('cpu' or 'cuda')."""

    def __init__(
        self,
        device: str = "cpu",
        *,
        warmup: int = 2,
        min_repeats: int = 5,
        max_repeats: int = 50,
        budget_s: float = 0.5,
        pool: int = 3,
    ):
        if min_repeats < 1 or max_repeats < min_repeats:
            raise ValueError("need 1 ≤ min_repeats ≤ max_repeats")
        self.device = device
        self.warmup = warmup
        self.min_repeats = min_repeats
        self.max_repeats = max_repeats
        self.budget_s = budget_s
        self.pool = max(1, pool)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def time(self, fn: Callable[[Any], Any], make_inputs: Callable[[], Any]) -> Timing:
        """Time ``fn(inputs)`` over a rotating pool of ``make_inputs()`` results."""
        pool = [make_inputs() for _ in range(self.pool)]
        for i in range(self.warmup):
            fn(pool[i % len(pool)])
        synchronize(self.device)
        # first estimate of one call, to size the number of repeats to the budget
        t0 = time.perf_counter()
        fn(pool[0])
        synchronize(self.device)
        one_s = max(time.perf_counter() - t0, 1e-7)
        n = int(min(self.max_repeats, max(self.min_repeats, self.budget_s / one_s)))
        samples = self._cuda(fn, pool, n) if self.cuda else self._host(fn, pool, n)
        return summarize(samples)

    def _host(self, fn, pool, n: int) -> list[float]:
        out = []
        for i in range(n):
            inputs = pool[(i + 1) % len(pool)]
            t0 = time.perf_counter()
            fn(inputs)
            out.append(time.perf_counter() - t0)
        return out

    def _cuda(self, fn, pool, n: int) -> list[float]:
        import torch

        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        torch.cuda.synchronize()
        for i in range(n):
            inputs = pool[(i + 1) % len(pool)]
            starts[i].record()
            fn(inputs)
            ends[i].record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends, strict=True)]  # ms → s
