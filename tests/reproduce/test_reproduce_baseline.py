"""moesim.reproduce.baseline: what the regression guard counts as worse."""

from __future__ import annotations

import json

import pytest

from moesim.reproduce.baseline import (
    MAX_GROWTH,
    baseline_of,
    read_baseline,
    regressions,
    write_baseline,
)
from moesim.reproduce.run import CaseResult


def b(**errors: float | None) -> dict:
    return {k: {"error": v, "reason": None if v is not None else "unsupported"} for k, v in
            errors.items()}  # fmt: skip


def test_the_allowance_is_two_points() -> None:
    assert pytest.approx(0.02) == MAX_GROWTH


@pytest.mark.parametrize(
    ("was", "now", "fails"),
    [
        (0.10, 0.121, True),  # grew by 2.1 points
        (0.10, 0.119, False),  # 1.9 points
        (-0.10, -0.121, True),  # negative errors grow by magnitude too
        (0.10, 0.02, False),  # an improvement
        (0.10, -0.05, False),  # sign flip, |error| smaller
        (-0.05, 0.071, True),  # sign flip, |error| 5% -> 7.1%: 2.1 points
        (-0.05, 0.069, False),  # sign flip, 1.9 points
    ],
)
def test_growth_of_abs_error(was: float, now: float, fails: bool) -> None:
    problems = regressions(b(x=was), b(x=now))
    assert bool(problems) is fails, problems
    if fails:
        assert problems[0].startswith("x: |error| grew by")


def test_missing_either_way() -> None:
    problems = regressions(b(a=0.1, gone=0.1), b(a=0.1, new=0.1))
    assert any(p.startswith("new: not in the baseline") for p in problems)
    assert any(p.startswith("gone: in the baseline but no longer") for p in problems)
    assert len(problems) == 2


def test_a_case_that_no_longer_simulates_fails_one_that_starts_to_is_fine() -> None:
    assert regressions(b(a=0.1), b(a=None)) == [
        "a: simulated in the baseline (+10.0%), now: unsupported"
    ]
    assert regressions(b(a=None), b(a=0.5)) == []
    assert regressions(b(a=None), b(a=None)) == []


def test_written_baseline_round_trips(tmp_path) -> None:
    rows = [
        CaseResult("z", "memory", "m", 2.0, 0.1, "s", 2.2),
        CaseResult("a", "serving", "m", 1.0, 0.1, "s", None, "unsupported: X"),
    ]
    path = write_baseline(rows, tmp_path / "baseline.json")
    data = read_baseline(path)
    assert list(data) == ["a", "z"]  # sorted: stable diffs
    assert data["z"]["error"] == pytest.approx(0.1)
    assert data["a"] == {"error": None, "reason": "unsupported: X"}
    assert regressions(data, baseline_of(rows)) == []
    assert json.loads(path.read_text()) == data
