"""The regression guard: each published case's error as last accepted, and what counts as worse.

``scenarios/published/baseline.json`` maps case id -> ``{"error": signed error or null,
"reason": why there is no error or null}``; ``moesim reproduce --write-baseline`` rewrites it.
A change to the cost model that moves a case more than ``MAX_GROWTH`` further from its
published figure must say so by rewriting the baseline in the same commit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moesim.reproduce.run import CaseResult

#: how much a case's |error| may grow before the guard fails: 2 percentage points
MAX_GROWTH = 0.02
BASELINE_NAME = "baseline.json"


def baseline_of(rows: list[CaseResult]) -> dict[str, dict[str, Any]]:
    """The baseline document of a run, sorted by id (stable diffs)."""
    return {r.id: {"error": r.error, "reason": r.reason} for r in sorted(rows, key=lambda r: r.id)}


def write_baseline(rows: list[CaseResult], path: str | Path) -> Path:
    from moesim.file_io import write_atomic

    return write_atomic(path, json.dumps(baseline_of(rows), indent=2) + "\n")


def read_baseline(path: str | Path) -> dict[str, dict[str, Any]]:
    return json.loads(Path(path).read_text())


def regressions(
    baseline: dict[str, dict[str, Any]],
    current: dict[str, dict[str, Any]],
    max_growth: float = MAX_GROWTH,
) -> list[str]:
    """What got worse from ``baseline`` to ``current`` (both as ``baseline_of`` writes them):
    a case whose |error| grew by more than ``max_growth``, a case that simulated and no longer
    does, a case in one and not the other. Empty when nothing did. A sign flip counts by
    |error|: -5% -> +6% grew by 1 point."""
    problems = []
    for case_id in sorted(set(current) - set(baseline)):
        problems.append(f"{case_id}: not in the baseline (run `moesim reproduce --write-baseline`)")
    for case_id in sorted(set(baseline) - set(current)):
        problems.append(f"{case_id}: in the baseline but no longer a case")
    for case_id in sorted(set(baseline) & set(current)):
        was, now = baseline[case_id].get("error"), current[case_id].get("error")
        if was is None:
            continue  # it did not simulate before: anything now is no worse
        if now is None:
            reason = current[case_id].get("reason") or "no prediction"
            problems.append(f"{case_id}: simulated in the baseline ({was:+.1%}), now: {reason}")
            continue
        growth = abs(now) - abs(was)
        if growth > max_growth + 1e-12:
            problems.append(
                f"{case_id}: |error| grew by {growth * 100:.1f} points ({was:+.1%} -> {now:+.1%})"
            )
    return problems
