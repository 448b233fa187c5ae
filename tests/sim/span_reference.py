"""The plain-loop references the array versions of span lengths are checked against
(``moesim.sim.spans``, ``moesim.sim.breakdown``): sort, keep the furthest end reached, add each
span's part past it, one at a time."""

from __future__ import annotations


def union_loop(spans: list[tuple[float, float]]) -> float:
    """Length of the union of ``spans``, summed left to right."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def exposed_loop(comm: list[tuple[float, float]], compute: list[tuple[float, float]]) -> float:
    """Length of the union of ``comm`` not covered by ``compute``."""
    return union_loop(comm + compute) - union_loop(compute)
