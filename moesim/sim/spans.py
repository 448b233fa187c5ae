"""Lengths of unions of time spans ``[start_s, end_s)``: how long a stream was busy, and how
long communication ran with the compute stream idle (the step's breakdown,
``moesim.sim.breakdown``).

The sums are left-to-right, one span at a time, as the plain loop (sort the spans; keep the
furthest end reached; add the part of each span past it) has them: ``np.cumsum`` adds in that
order, ``np.sum`` pairwise in another, whose last bits differ, and the simulator's results are
kept bit for bit when its arithmetic moves from Python loops to arrays.
"""

from __future__ import annotations

import numpy as np

Spans = list[tuple[float, float]]


def running_sum(values: np.ndarray) -> float:
    """``total = 0.0; for v in values: total += v``: the sequential sum (``np.cumsum``'s
    last element), not ``np.sum``'s pairwise one."""
    return float(np.cumsum(values)[-1]) if values.size else 0.0


def union_length_arr(start_s: np.ndarray, end_s: np.ndarray) -> float:
    """Length of the union of the spans ``[start_s[i], end_s[i])``. Spans sorted by (start,
    end); each adds ``end − max(start, reach)`` where it ends past ``reach``, the furthest end
    of the spans before it (−∞ at first), and adds nothing where it does not."""
    if start_s.size == 0:
        return 0.0
    order = np.lexsort((end_s, start_s))  # stable, as sorted() on (start, end) tuples
    start_s, end_s = start_s[order], end_s[order]
    reach = np.empty_like(end_s)
    reach[0] = -np.inf
    np.maximum.accumulate(end_s[:-1], out=reach[1:])
    past = end_s > reach
    return running_sum(end_s[past] - np.maximum(start_s[past], reach[past]))


def _arrays(spans: Spans) -> tuple[np.ndarray, np.ndarray]:
    if not spans:
        return np.empty(0), np.empty(0)
    start_s, end_s = zip(*spans, strict=True)
    return np.array(start_s, dtype=float), np.array(end_s, dtype=float)


def union_length_s(spans: Spans) -> float:
    """Length of the union of ``spans`` (``(start_s, end_s)`` pairs)."""
    return union_length_arr(*_arrays(spans))


def exposed_length_arr(
    comm_start_s: np.ndarray,
    comm_end_s: np.ndarray,
    compute_start_s: np.ndarray,
    compute_end_s: np.ndarray,
) -> float:
    """Length of the union of the comm spans not covered by any compute span: the union of
    both less the union of compute."""
    both = union_length_arr(
        np.concatenate((comm_start_s, compute_start_s)),
        np.concatenate((comm_end_s, compute_end_s)),
    )
    return both - union_length_arr(compute_start_s, compute_end_s)


def exposed_length_s(comm: Spans, compute: Spans) -> float:
    """Length of the union of ``comm`` spans not covered by any ``compute`` span."""
    return exposed_length_arr(*_arrays(comm), *_arrays(compute))
