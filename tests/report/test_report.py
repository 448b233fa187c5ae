"""Reports: every kind builds, is self-contained, and renders in a real browser without errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import check_in_browser, chromium  # tests/report/browser.py (pytest's rootdir)

from moesim.report.build import (
    comparison_report,
    scenario_report,
    sweep_report,
    traffic_matrix_MB,
    variant,
)
from moesim.report.html import Report, Section
from moesim.scenario_io import load_scenario
from moesim.sim.run import simulate

ROOT = Path(__file__).parents[2]
MIXTRAL = ROOT / "scenarios" / "mixtral-8x7b-pretrain-256xh100.yaml"
LLAMA = ROOT / "scenarios" / "pretrain" / "llama-2-13b-256xh100.yaml"

needs_browser = pytest.mark.skipif(
    chromium() is None and not os.environ.get("CI"),
    reason="chromium not installed (make test installs it; CI requires it)",
)


@pytest.fixture(scope="module")
def mixtral_report(tmp_path_factory) -> Path:
    rep = scenario_report(load_scenario(MIXTRAL))
    return rep.write(tmp_path_factory.mktemp("r") / "mixtral.html")


def test_scenario_report_is_self_contained(mixtral_report):
    html = mixtral_report.read_text()
    assert "<script src=" not in html  # plotly.js inlined, no CDN
    assert html.count("plotly-graph-div") >= 8
    for heading in ("Where the step time goes", "Memory per GPU", "Timeline",
                    "All-to-all traffic", "Sensitivity", "Cost", "Assumptions"):  # fmt: skip
        assert heading in html
    assert "MFU" in html and "GPU-hours" in html


@needs_browser
def test_reports_render_in_chromium_without_errors(mixtral_report, tmp_path):
    got = check_in_browser(mixtral_report)
    assert got["errors"] == []
    assert got["plots"] >= 8 and got["rendered"] == got["plots"]
    scenarios = [load_scenario(MIXTRAL), load_scenario(LLAMA)]
    results = [simulate(s) for s in scenarios]
    cmp = comparison_report(scenarios, results, "mixtral vs llama").write(tmp_path / "c.html")
    got = check_in_browser(cmp)
    assert got["errors"] == [] and got["rendered"] == got["plots"] >= 4


@needs_browser
def test_browser_probe_catches_javascript_errors(tmp_path):
    """The probe must be able to fail: a page that throws is reported."""
    rep = Report("broken", "a page whose script throws")
    rep.add(Section("x", "<script>this_function_does_not_exist();</script>"))
    got = check_in_browser(rep.write(tmp_path / "broken.html"))
    assert got["errors"] and "this_function_does_not_exist" in got["errors"][0]


def test_traffic_matrix_conserves_bytes_and_shows_hot_experts():
    s = load_scenario(MIXTRAL)
    uniform, labels = traffic_matrix_MB(s)
    assert len(labels) == 8
    tokens_MB = 4096 * 2 * 4096 * 2 / 1e6  # tokens · top-2 · d · bf16 per source GPU
    assert uniform.sum(axis=1) == pytest.approx([tokens_MB] * 8)
    skewed_s = variant(s, routing__distribution="zipf", routing__skew=1.5)
    skewed, _ = traffic_matrix_MB(skewed_s)
    assert skewed.sum(axis=1) == pytest.approx([tokens_MB] * 8)
    assert skewed.max() > 2 * uniform.max()


def test_variant_rejects_invalid_layouts():
    s = load_scenario(MIXTRAL)
    assert variant(s, parallel__ep=3) is None  # 3 does not divide 8 experts
    assert variant(s, parallel__ep=4).parallel.ep == 4


def test_sweep_report_builds_from_a_frame():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "param.parallel.ep": [1, 2, 1, 2],
            "param.routing.skew": [0.0, 0.0, 1.0, 1.0],
            "step_time_s": [1.0, 1.1, 2.0, 1.5],
            "mfu": [0.5, 0.45, 0.25, 0.3],
            "error": [None, None, None, None],
        }
    )
    html = sweep_report(frame, "t").render()
    assert "step_time_s vs parallel.ep" in html
