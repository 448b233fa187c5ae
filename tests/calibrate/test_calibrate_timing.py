"""The timer: the median ignores outliers, inputs rotate and are never reused back to back."""

import itertools
import time

import pytest

pytest.importorskip("torch")

from moesim.calibrate.timing import Timer, summarize


def test_summarize_percentiles():
    t = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert t.median_s == 3.0
    assert t.p10_s == pytest.approx(1.4)
    assert t.p90_s == pytest.approx(4.6)
    assert t.repeats == 5
    with pytest.raises(ValueError):
        summarize([])


def test_median_is_robust_to_outliers():
    calls = {"n": 0}

    def fn(_):
        calls["n"] += 1
        time.sleep(0.03 if calls["n"] % 4 == 0 else 0.002)  # every 4th call is 15× slower

    t = Timer("cpu", warmup=1, min_repeats=12, max_repeats=12, budget_s=0.0).time(fn, lambda: 0)
    assert t.repeats == 12
    assert 0.0018 < t.median_s < 0.006  # the mean would be ≈ 0.009
    assert t.p90_s > 0.02


def test_inputs_rotate_through_a_pool_of_distinct_sets():
    made, seen = [], []

    def make():
        made.append(len(made))
        return made[-1]

    Timer("cpu", warmup=0, min_repeats=6, max_repeats=6, pool=3).time(seen.append, make)
    assert made == [0, 1, 2]
    timed = seen[1:]  # the first call sizes the repeats
    assert len(timed) == 6
    assert all(a != b for a, b in itertools.pairwise(timed))


def test_repeats_follow_the_budget():
    t = Timer("cpu", warmup=0, min_repeats=3, max_repeats=1000, budget_s=0.05).time(
        lambda _: time.sleep(0.01), lambda: 0
    )
    assert 3 <= t.repeats <= 6
