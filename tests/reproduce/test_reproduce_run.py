"""moesim.reproduce.run: metric extraction, error arithmetic, summary, failures kept as rows."""

from __future__ import annotations

import pytest

from moesim.reproduce.run import (
    CaseResult,
    MetricError,
    extract_metric,
    load_cases,
    run_cases,
    summary,
    to_json,
)
from moesim.scenario_io import ScenarioError
from moesim.sim.run import simulate


def row(case_id: str, cls: str, published: float, predicted: float | None, tol=0.15):
    reason = None if predicted is not None else "could not"
    return CaseResult(case_id, cls, "step_time_s", published, tol, "src", predicted, reason)


def test_extract_metric_top_level_and_nested() -> None:
    result = {"step_time_s": 2.5, "memory_per_gpu_GB": {"total": 61.0, "activations": 12}}
    assert extract_metric(result, "step_time_s") == 2.5
    assert extract_metric(result, "memory_per_gpu_GB.total") == 61.0
    assert extract_metric(result, "memory_per_gpu_GB.activations") == 12.0


def test_extract_metric_missing_key_says_which_and_what_there_is() -> None:
    result = {"memory_per_gpu_GB": {"total": 61.0, "weights": 3.0}}
    with pytest.raises(MetricError, match=r"'totl' is not in memory_per_gpu_GB \(it has: total"):
        extract_metric(result, "memory_per_gpu_GB.totl")
    with pytest.raises(MetricError, match="'ttft_s_p50' is not in the result"):
        extract_metric(result, "ttft_s_p50")
    with pytest.raises(MetricError, match="not a number"):
        extract_metric(result, "memory_per_gpu_GB")
    with pytest.raises(MetricError, match="not a number"):
        extract_metric({"x": None}, "x")


def test_extract_metric_from_a_real_result(write_case) -> None:
    case = load_cases(write_case("c"))[0]
    d = simulate(case.scenario).to_json_dict()
    assert extract_metric(d, "memory_per_gpu_GB.total") == d["memory_per_gpu_GB"]["total"]


@pytest.mark.parametrize(
    ("published", "predicted", "tol", "error", "within"),
    [
        (40.0, 46.0, 0.15, 0.15, True),  # exactly on the tolerance counts
        (40.0, 46.4, 0.15, 0.16, False),
        (40.0, 30.0, 0.15, -0.25, False),
        (2.0, 1.9, 0.10, -0.05, True),
    ],
)
def test_error_and_within_on_hand_values(published, predicted, tol, error, within) -> None:
    r = row("a", "dense_training", published, predicted, tol)
    assert r.error == pytest.approx(error)
    assert r.within is within


def test_no_prediction_has_no_error() -> None:
    r = row("a", "serving", 1.0, None)
    assert r.error is None and r.within is None


def test_summary_median_and_max_per_class_and_overall() -> None:
    rows = [
        row("a", "dense_training", 10.0, 11.0),  # +10%
        row("b", "dense_training", 10.0, 7.0),  # -30%
        row("c", "dense_training", 10.0, 10.4),  # +4%
        row("d", "memory", 10.0, 9.5),  # -5%
        row("e", "memory", 10.0, None),  # not simulated
    ]
    s = summary(rows)
    dense, mem, overall = s["by_class"]["dense_training"], s["by_class"]["memory"], s["overall"]
    assert (dense["n"], dense["n_simulated"], dense["n_within"]) == (3, 3, 2)
    assert dense["median_abs_error"] == pytest.approx(0.10)
    assert dense["max_abs_error"] == pytest.approx(0.30)
    assert (mem["n"], mem["n_simulated"], mem["n_within"]) == (2, 1, 1)
    assert mem["median_abs_error"] == pytest.approx(0.05)
    assert overall["n"] == 5 and overall["n_within"] == 3
    assert overall["median_abs_error"] == pytest.approx((0.05 + 0.10) / 2)  # of 4, even count
    assert overall["max_abs_error"] == pytest.approx(0.30)
    assert list(s["by_class"]) == ["dense_training", "memory"]  # classes present only


def test_json_contract_keys() -> None:
    doc = to_json([row("a", "dense_training", 10.0, 11.0), row("b", "memory", 1.0, None)])
    assert set(doc) == {"cases", "summary"}
    contract = {"id", "class", "metric", "published", "predicted", "error", "source"}
    for case in doc["cases"]:
        assert contract <= set(case)
    assert doc["cases"][0]["error"] == pytest.approx(0.1)
    assert doc["cases"][1]["reason"] == "could not" and doc["cases"][1]["error"] is None


def test_a_bad_case_among_good_ones_is_reported_and_the_others_run(write_case, tmp_path) -> None:
    write_case("moe/good", value=0.001)
    write_case("moe/bad-layout", ep=3)
    write_case("moe/bad-metric", metric="memory_per_gpu_GB.nope")
    write_case("moe/later", extra="  unsupported: 'moesim lacks X'\n")
    seen = []
    rows = {r.id: r for r in run_cases(load_cases(tmp_path), on_case=lambda c: seen.append(c.id))}
    assert seen == ["bad-layout", "bad-metric", "good", "later"]
    assert rows["good"].predicted is not None and rows["good"].reason is None
    assert rows["good"].time_breakdown_s["compute"] > 0
    assert rows["bad-layout"].predicted is None and "parallel.ep" in rows["bad-layout"].reason
    assert "'nope' is not in memory_per_gpu_GB" in rows["bad-metric"].reason
    assert rows["later"].reason == "unsupported: moesim lacks X"


def test_unsupported_stage_is_a_row(write_case, tmp_path, monkeypatch) -> None:
    import moesim.sim.run as sim_run

    write_case("x")
    monkeypatch.setattr(sim_run, "SIMULATED_STAGES", ("inference",))
    (r,) = run_cases(load_cases(tmp_path))
    assert r.reason is not None and "is not simulated yet" in r.reason


def test_no_cases_is_an_error(tmp_path) -> None:
    with pytest.raises(ScenarioError, match="no published cases found"):
        load_cases(tmp_path)


def test_two_files_with_one_id_are_an_error(write_case, tmp_path) -> None:
    write_case("moe/same")
    write_case("dense/same")
    with pytest.raises(ScenarioError, match="case id 'same' is also"):
        load_cases(tmp_path)
