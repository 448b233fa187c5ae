"""``--set key=value`` on simulate, compare, report and plan (scenario_io.parse_overrides):
the value is typed as a file would be, checked by the schema, errors name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.scenario_io import ScenarioError, load_scenario, parse_overrides

ROOT = Path(__file__).parents[2]
MIXTRAL = str(ROOT / "scenarios" / "mixtral-8x7b-pretrain-256xh100.yaml")


def test_values_are_typed_as_in_a_file() -> None:
    got = parse_overrides(["parallel.ep=16", "routing={distribution: zipf, skew: 0.5}", "a.b=fp8"])
    assert got == [
        ("parallel.ep", 16),
        ("routing", {"distribution": "zipf", "skew": 0.5}),
        ("a.b", "fp8"),
    ]


def test_null_unsets_an_optional_field_and_is_refused_where_one_is_required() -> None:
    assert parse_overrides(["workload.speculative=null"]) == [("workload.speculative", None)]
    s = load_scenario(MIXTRAL, [("simulation.profile", None)])
    assert s.simulation.profile is None
    with pytest.raises(ScenarioError, match=r"parallel\.ep"):
        load_scenario(MIXTRAL, parse_overrides(["parallel.ep=null"]))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("parallel.ep", "write key=value"),
        ("=4", "write key=value"),
        ("parallel..ep=4", "write key=value"),
        ("parallel.ep=", "give a value"),
        ("parallel.ep=[1, 2", "not a value YAML can read"),
    ],
)
def test_malformed_sets_name_the_argument(item: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_overrides([item])


def test_an_override_replaces_the_field_and_the_schema_checks_it() -> None:
    s = load_scenario(MIXTRAL, parse_overrides(["parallel.ep=4", "routing.skew=0.5"]))
    assert s.parallel.ep == 4 and s.routing.skew == 0.5
    with pytest.raises(ScenarioError, match=r"parallel\.epp: unknown key"):
        load_scenario(MIXTRAL, parse_overrides(["parallel.epp=4"]))
    with pytest.raises(ScenarioError, match=r"--set cluster\.gpu\.hbm_GB: 'gpu' is 'h100-sxm'"):
        load_scenario(MIXTRAL, parse_overrides(["cluster.gpu.hbm_GB=100"]))


def test_simulate_and_compare_apply_the_override(moesim) -> None:
    base = json.loads(moesim("simulate", MIXTRAL, "--json").stdout)
    r = moesim("simulate", MIXTRAL, "--json", "--set", "parallel.ep=4")
    assert r.returncode == 0, r.output
    assert json.loads(r.stdout)["step_time_s"] != base["step_time_s"]
    cmp = ROOT / "scenarios" / "compare-mixtral-vs-dense-pretrain.yaml"
    r = moesim("compare", str(cmp), "--json", "--set", "workload.global_batch=512")
    assert r.returncode == 0, r.output
    assert all(x["tokens_per_s"] > 0 for x in json.loads(r.stdout)["results"])
    bad = moesim("simulate", MIXTRAL, "--set", "parallel.ep=three")
    assert bad.returncode == 2 and "parallel.ep" in bad.stderr and "Traceback" not in bad.output


def test_plan_takes_an_override(moesim) -> None:
    plan = str(ROOT / "scenarios" / "plans" / "mixtral-pretrain-30-days.yaml")
    r = moesim("plan", plan, "--json", "--set", "constraints.deadline_days=60")
    assert r.returncode == 0, r.output
    assert json.loads(r.stdout)["constraints"]["deadline_days"] == 60
