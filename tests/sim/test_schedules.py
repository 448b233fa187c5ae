"""Pipeline schedules: every pass exactly once, in an order that respects dependencies."""

from __future__ import annotations

import pytest

from moesim.sim.schedules import Task, bubble_fraction_1f1b, schedule


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "dualpipe"])
@pytest.mark.parametrize(("pp", "m"), [(1, 1), (4, 8), (4, 2), (8, 16)])
def test_every_microbatch_runs_forward_then_backward_once(name, pp, m):
    for rank in range(pp):
        tasks = schedule(name, pp, m, rank)
        assert sorted(tasks) == sorted(
            [Task("F", i, 0) for i in range(m)] + [Task("B", i, 0) for i in range(m)]
        )
        for i in range(m):
            assert tasks.index(Task("F", i, 0)) < tasks.index(Task("B", i, 0))


def test_1f1b_warmup_shrinks_down_the_pipeline():
    tasks = schedule("1f1b", 4, 8, 0)
    assert [t.kind for t in tasks[:4]] == ["F", "F", "F", "F"]
    last = schedule("1f1b", 4, 8, 3)
    assert [t.kind for t in last[:2]] == ["F", "B"]


@pytest.mark.parametrize("rank", range(4))
def test_interleaved_runs_every_chunk_of_every_microbatch(rank):
    pp, m, v = 4, 8, 2
    tasks = schedule("interleaved_1f1b", pp, m, rank, v)
    expected = {Task(k, i, c) for k in "FB" for i in range(m) for c in range(v)}
    assert set(tasks) == expected and len(tasks) == len(expected)
    for i in range(m):
        for c in range(v):
            assert tasks.index(Task("F", i, c)) < tasks.index(Task("B", i, c))


def test_interleaved_needs_microbatches_in_multiples_of_pp():
    with pytest.raises(ValueError, match="multiple of pp"):
        schedule("interleaved_1f1b", 4, 6, 0, 2)


def test_bubble_formula():
    assert bubble_fraction_1f1b(4, 12) == pytest.approx(3 / 15)
    assert bubble_fraction_1f1b(1, 5) == 0.0
