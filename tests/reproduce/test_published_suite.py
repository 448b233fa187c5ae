"""The shipped published cases (scenarios/published/) against their baseline.

A change that moves any case more than 2 percentage points further from its published figure,
or stops a case from simulating, fails here until the baseline is rewritten in the same commit
(``moesim reproduce --write-baseline``), which makes the change to the error visible in review.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.reproduce.baseline import BASELINE_NAME, baseline_of, read_baseline, regressions
from moesim.reproduce.cases import CLASSES, find_case_files
from moesim.reproduce.run import CaseResult, load_cases, run_cases

PUBLISHED = Path(__file__).parents[2] / "scenarios" / "published"


@pytest.fixture(scope="module")
def suite() -> list[CaseResult]:
    """Every shipped case, simulated once for the module."""
    if not PUBLISHED.is_dir() or not find_case_files(PUBLISHED):
        pytest.skip(
            "scenarios/published/ holds no cases on this branch yet (they arrive with the "
            "published-case branches of issue 12)"
        )
    return run_cases(load_cases(PUBLISHED))


def test_cases_sit_in_their_class_folder(suite: list[CaseResult]) -> None:
    for path in find_case_files(PUBLISHED):
        rel = path.relative_to(PUBLISHED)
        row = next(r for r in suite if r.id == path.stem)
        assert len(rel.parts) == 2 and rel.parts[0] == row.case_class, (
            f"{rel}: put it at scenarios/published/{row.case_class}/{path.name}"
        )
        assert rel.parts[0] in CLASSES


def test_no_case_got_worse_than_its_baseline(suite: list[CaseResult]) -> None:
    path = PUBLISHED / BASELINE_NAME
    assert path.is_file(), f"{path} is missing: run `moesim reproduce --write-baseline`"
    problems = regressions(read_baseline(path), baseline_of(suite))
    assert not problems, (
        "published cases moved away from their figures (if intended, rewrite the baseline "
        "with `moesim reproduce --write-baseline` and say so in the commit):\n"
        + "\n".join(problems)
    )
