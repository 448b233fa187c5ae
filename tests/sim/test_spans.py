"""Union and exposed lengths on arrays equal the plain loop over sorted tuples, bit for bit."""

from __future__ import annotations

import random

import numpy as np
import pytest
from span_reference import exposed_loop, union_loop

from moesim.sim.spans import exposed_length_s, running_sum, union_length_s


def _random_spans(rng: random.Random, n: int) -> list[tuple[float, float]]:
    """Spans with shared starts and ends (ties), spans inside others (nested), spans that
    begin where another ends (touching) and zero-length ones, at uneven float times."""
    points = [rng.uniform(0.0, 10.0) for _ in range(max(2, n // 3))]
    spans: list[tuple[float, float]] = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3 or not spans:  # from the shared points: ties and touching
            a, b = sorted(rng.sample(points, 2))
        elif kind < 0.5:  # nested in an earlier span
            s, e = rng.choice(spans)
            a = rng.uniform(s, e)
            b = rng.uniform(a, e)
        elif kind < 0.65:  # touching an earlier span's end
            a = rng.choice(spans)[1]
            b = a + rng.expovariate(2.0)
        elif kind < 0.7:  # zero length
            a = b = rng.choice(points)
        elif kind < 0.75:  # a copy (identical tuples)
            a, b = rng.choice(spans)
        else:
            a = rng.uniform(0.0, 10.0)
            b = a + rng.expovariate(1.0) * rng.choice((1e-9, 1e-3, 1.0))
        spans.append((a, b))
    rng.shuffle(spans)
    return spans


@pytest.mark.parametrize("seed", range(40))
def test_union_and_exposed_equal_the_loop_exactly(seed):
    rng = random.Random(seed)
    n = rng.choice((1, 2, 5, 30, 300, 3000))
    spans = _random_spans(rng, n)
    assert union_length_s(spans) == union_loop(spans)
    comm, compute = spans[: n // 2], spans[n // 2 :]
    assert exposed_length_s(comm, compute) == exposed_loop(comm, compute)
    assert exposed_length_s(compute, comm) == exposed_loop(compute, comm)


def test_empty_and_hand_computed():
    assert union_length_s([]) == 0.0
    assert exposed_length_s([], []) == 0.0
    assert exposed_length_s([(1.0, 2.0)], []) == 1.0
    assert union_length_s([(0, 2), (1, 3), (5, 6)]) == 4
    # touching spans: (0.1, 0.2) then (0.2, 0.3) adds 0.1 + 0.1 (not 0.3 − 0.1)
    assert union_length_s([(0.2, 0.3), (0.1, 0.2)]) == (0.2 - 0.1) + (0.3 - 0.2)
    assert exposed_length_s([(0.0, 4.0)], [(1.0, 2.0), (3.0, 5.0)]) == 2.0


def test_running_sum_is_the_sequential_sum():
    """``total += v`` order, not ``np.sum``'s pairwise one: the data are such that the two
    differ somewhere, so the test tells them apart."""
    rng = np.random.default_rng(0)
    pairwise_differs = False
    for _ in range(50):
        v = rng.exponential(size=int(rng.integers(1, 2000))) * 10.0 ** rng.integers(-9, 3)
        total = 0.0
        for x in v.tolist():
            total += x
        assert running_sum(v) == total
        pairwise_differs |= float(np.sum(v)) != total
    assert pairwise_differs
    assert running_sum(np.empty(0)) == 0.0
