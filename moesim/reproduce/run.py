"""Simulate published cases and measure how far each prediction is from the published figure.

``error`` = predicted / published − 1 (signed: negative means moesim is low). A case that
cannot be simulated stays in the output with its reason and no error: a gap in what moesim can
express is a result too, and one broken case never stops the others.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from moesim.reproduce.cases import CLASSES, Case, find_case_files, load_case
from moesim.scenario_io import ScenarioError


@dataclass(frozen=True)
class CaseResult:
    """One row of the comparison: what was published, what moesim predicts, or why not."""

    id: str
    case_class: str
    metric: str
    published: float
    tolerance: float
    source: str
    predicted: float | None = None
    reason: str | None = None  # why there is no prediction
    time_breakdown_s: dict[str, float] = field(default_factory=dict)

    @property
    def error(self) -> float | None:
        """predicted / published − 1, or None without a prediction."""
        if self.predicted is None:
            return None
        return relative_error(self.predicted, self.published)

    @property
    def within(self) -> bool | None:
        e = self.error
        return None if e is None else is_within(e, self.tolerance)

    def to_json_dict(self) -> dict[str, Any]:
        """The DESIGN.md contract keys first, then within, tolerance and reason."""
        return {
            "id": self.id,
            "class": self.case_class,
            "metric": self.metric,
            "published": self.published,
            "predicted": self.predicted,
            "error": self.error,
            "source": self.source,
            "within": self.within,
            "tolerance": self.tolerance,
            "reason": self.reason,
        }


def relative_error(predicted: float, published: float) -> float:
    return predicted / published - 1.0


def is_within(error: float, tolerance: float) -> bool:
    # a hair of slack so that a case exactly on its tolerance (1.15 / 1.0 − 1) counts as within
    return abs(error) <= tolerance + 1e-12


class MetricError(KeyError):
    """The metric's dotted path names nothing numeric in the result."""

    def __str__(self) -> str:
        return str(self.args[0])


def extract_metric(result: dict[str, Any], metric: str) -> float:
    """``result[a][b]`` for ``metric`` 'a.b'; MetricError saying which part is missing."""
    node: Any = result
    seen: list[str] = []
    for part in metric.split("."):
        if not isinstance(node, dict) or part not in node:
            have = sorted(node) if isinstance(node, dict) else []
            where = ".".join(seen) or "the result"
            raise MetricError(
                f"metric '{metric}': '{part}' is not in {where}"
                + (f" (it has: {', '.join(have)})" if have else "")
            )
        node = node[part]
        seen.append(part)
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise MetricError(f"metric '{metric}' is {node!r} in the result, not a number")
    return float(node)


def load_cases(root: str | Path) -> list[Case]:
    """Every case under ``root``; ScenarioError when there is none or a file is broken."""
    files = find_case_files(root)
    if not files:
        raise ScenarioError(
            f"{root}: no published cases found (case YAML files under it); "
            "see scenarios/published/README.md"
        )
    cases = [load_case(p, strict=False) for p in files]
    first: dict[str, Path] = {}
    for c in cases:  # the id keys the baseline and the report: two files cannot share one
        if c.id in first:
            raise ScenarioError(f"{c.path}: case id '{c.id}' is also {first[c.id]}: rename one")
        first[c.id] = c.path
    return cases


def run_case(case: Case) -> CaseResult:
    """Simulate one case (base_dir = its folder) and read its metric; never raises."""
    from moesim.sim.run import simulate

    e = case.expect
    row = CaseResult(case.id, e.case_class, e.metric, e.value, e.tolerance, e.source)

    def failed(reason: str) -> CaseResult:
        return replace(row, reason=reason)

    if e.unsupported is not None:
        return failed(f"unsupported: {e.unsupported}")
    if case.scenario is None:
        return failed(case.load_error or "the scenario did not load")
    try:
        result = simulate(case.scenario, base_dir=case.path.parent).to_json_dict()
    except (ValueError, FileNotFoundError) as err:  # unsupported stage, schedule, routing file
        return failed(f"cannot simulate: {err}")
    except Exception as err:  # a simulator bug: reported on its row, the suite goes on
        return failed(f"simulator error: {type(err).__name__}: {err}")
    try:
        predicted = extract_metric(result, e.metric)
    except MetricError as err:
        return failed(str(err))
    breakdown = result.get("time_breakdown_s") or {}
    return replace(row, predicted=predicted, time_breakdown_s=dict(breakdown))


def run_cases(
    cases: Iterable[Case], on_case: Callable[[Case], None] | None = None
) -> list[CaseResult]:
    """Every case's row, in order; ``on_case`` is called after each (a progress bar)."""
    rows = []
    for case in cases:
        rows.append(run_case(case))
        if on_case is not None:
            on_case(case)
    return rows


def _stats(rows: list[CaseResult]) -> dict[str, Any]:
    errors = [abs(r.error) for r in rows if r.error is not None]
    return {
        "n": len(rows),
        "n_simulated": len(errors),
        "n_within": sum(1 for r in rows if r.within),
        "median_abs_error": statistics.median(errors) if errors else None,
        "max_abs_error": max(errors) if errors else None,
    }


def summary(rows: list[CaseResult]) -> dict[str, Any]:
    """n, n_simulated, n_within, median and max |error|, per class (in CLASSES order, only the
    classes present) and overall."""
    by_class = {c: [r for r in rows if r.case_class == c] for c in CLASSES}
    return {
        "by_class": {c: _stats(rs) for c, rs in by_class.items() if rs},
        "overall": _stats(rows),
    }


def to_json(rows: list[CaseResult]) -> dict[str, Any]:
    """The ``moesim reproduce --json`` document (DESIGN.md)."""
    return {"cases": [r.to_json_dict() for r in rows], "summary": summary(rows)}
