"""moesim.report.reproduce: the figures of the published-case report."""

from __future__ import annotations

import pytest

from moesim.report.reproduce import (
    predicted_vs_published,
    reproduce_report,
    signed_errors,
    time_breakdowns,
)
from moesim.reproduce.run import CaseResult

TRAIN_TB = {"compute": 3.0, "exposed_comm": 1.0, "bubble": 0.5, "all_to_all": 2.0, "dp_comm": 1}
POST_TB = {"compute": 9.0, "exposed_comm": 1.0, "bubble": 0.0, "rollout": 6.0, "training": 4.0}
ROWS = [
    CaseResult("a", "dense_training", "step_time_s", 4.0, 0.15, "paper A", 4.5, None, TRAIN_TB),
    CaseResult("b", "memory", "memory_per_gpu_GB.total", 60.0, 0.1, "paper B", 54.0),
    CaseResult("c", "post_training", "step_time_s", 9.0, 0.15, "paper C", 10.0, None, POST_TB),
    CaseResult("d", "serving", "ttft_s_p50", 0.2, 0.15, "paper D", None, "unsupported: X"),
]


def test_predicted_vs_published_one_trace_per_class_and_the_diagonal() -> None:
    fig = predicted_vs_published(ROWS)
    names = [t.name for t in fig.data]
    assert names == ["dense training", "memory", "post training", "y = x"]
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    diag = fig.data[-1]
    assert list(diag.x) == list(diag.y)
    assert diag.x[0] < 4.0 and diag.x[1] > 60.0  # spans every point
    assert fig.data[1].customdata[0][0] == "b" and fig.data[1].customdata[0][2] == "paper B"


def test_signed_errors_and_tolerance_band() -> None:
    fig = signed_errors(ROWS)
    band, err = fig.data
    assert list(err.x) == ["a", "b", "c"]  # d has no prediction
    assert list(err.y) == pytest.approx([0.125, -0.1, 1 / 9])
    assert list(band.base) == pytest.approx([-0.15, -0.1, -0.15])
    assert list(band.y) == pytest.approx([0.3, 0.2, 0.3])


def test_time_breakdowns_stack_to_the_step_phases_for_post_training() -> None:
    fig = time_breakdowns(ROWS)
    stacks: dict[str, float] = {}
    for trace in fig.data:
        for case, x in zip(trace.y, trace.x, strict=True):
            stacks[case] = stacks.get(case, 0.0) + x
    assert stacks == pytest.approx({"a": 4.5, "c": 10.0})  # not compute + phases twice
    assert "all to all" not in {t.name for t in fig.data}  # hidden totals are not stacked


def test_report_renders_with_the_lead_figures() -> None:
    page = reproduce_report(ROWS).render()
    assert "4 published cases, 3 simulated, 3 within their tolerance" in page
    assert page.count("Plotly.newPlot") >= 3
    assert "unsupported: X" in page
