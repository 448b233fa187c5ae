"""Capacity planning of serving deployments, through the inference simulator: layouts meeting
p99 TTFT/TPOT SLOs at the least cost per hour, the weights-read TPOT bound (below the simulated
TPOT, and pruning before simulating), and the engine knobs a plan searches (max_num_seqs, the
token budget, two-batch overlap, speculative drafts per step)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from plan_dicts import PLAN, SERVING_PLAN

from moesim.plan import (
    candidates,
    cluster_sizes,
    plan_from_dict,
    run_plan,
    tpot_lower_bound_s,
)
from moesim.scenario_io import ScenarioError


@pytest.fixture(scope="module")
def serving_plan():
    return run_plan(plan_from_dict(SERVING_PLAN))


def test_serving_plan_returns_only_layouts_meeting_the_slos(serving_plan):
    """Every reported layout was simulated under Poisson arrivals and meets both p99 SLOs; the
    cheapest per hour comes first, and a serving row carries its latency and $ per M tokens."""
    assert serving_plan.serving and serving_plan.best
    for c in serving_plan.best:
        assert c.result.stage == "inference" and c.result.fits_in_memory
        assert c.result.ttft_s_p99 <= 1.0 and c.result.tpot_s_p99 <= 0.02
    # the search had to reject some: 2 GPUs, and 4 GPUs with ep 2, decode too slowly
    assert serving_plan.rejected
    for c in serving_plan.rejected:
        r = c.result
        assert r.ttft_s_p99 > 1.0 or r.tpot_s_p99 > 0.02, c.why_not
    assert serving_plan.best[0].scenario.name == "mixtral-serving[4 GPUs tp2 pp1 ep4]"
    per_hour = [c.usd_per_hour for c in serving_plan.best]
    assert per_hour == sorted(per_hour)
    assert per_hour[0] == serving_plan.best[0].scenario.gpus * 2.0  # the catalog's default price
    row = serving_plan.best[0].row()
    assert row["cost_per_million_tokens_usd"] > 0 and row["replicas"] >= 1
    assert row["run_days"] is None  # serving has no run length without total_tokens


def test_serving_plan_searches_gpus_below_a_node():
    considered, scenarios = candidates(plan_from_dict(SERVING_PLAN))
    assert considered == 3 * 3  # gpus · ep: serving has one ZeRO stage, microbatch, recompute
    assert {s.gpus for s in scenarios} <= {2, 4, 8}
    assert {(s.cluster.nodes, s.cluster.gpus_per_node) for s in scenarios} >= {(1, 2), (1, 4)}
    assert all(s.parallel.zero_stage == 0 and s.parallel.recompute == "none" for s in scenarios)


def test_tpot_lower_bound_never_exceeds_the_simulated_tpot(serving_plan):
    """Every simulated serving layout: weights-read bound ≤ its p50 (and so p99) TPOT."""
    assert serving_plan.simulated
    for c in serving_plan.simulated:
        assert c.bound_tpot_s == tpot_lower_bound_s(c.scenario)
        assert 0 < c.bound_tpot_s <= c.result.tpot_s_p50 <= c.result.tpot_s_p99, c.why_not


def test_a_tpot_slo_below_the_weights_read_bound_prunes_without_simulating():
    def never(s):
        raise AssertionError(f"{s.name} was simulated although its bound misses the SLO")

    tight = dict(SERVING_PLAN, constraints={"tpot_p99_s": 1e-4})
    result = run_plan(plan_from_dict(tight), simulate=never)
    assert result.fitting > 0 and result.pruned == result.pruned_by["tpot_p99_s"] == result.fitting
    assert result.simulated == [] and result.best == []
    assert "tpot_p99_s: " in result.summary()


def test_tighter_slo_rejects_every_layout_with_a_clear_why_not():
    tight = dict(SERVING_PLAN, constraints={"ttft_p99_s": 1.0, "tpot_p99_s": 0.002})
    result = run_plan(plan_from_dict(tight))
    assert result.best == [] and result.pareto == []
    assert result.rejected and len(result.rejected) == len(result.simulated)
    for c in result.rejected:
        assert any(w.startswith("p99 TPOT ") and w.endswith("> SLO 2 ms") for w in c.why_not)
    d = result.to_json_dict()
    assert d["best"] == [] and "p99 TPOT" in d["rejected"][0]["why_not"]
    assert d["constraints"] == {"ttft_p99_s": 1.0, "tpot_p99_s": 0.002}


def test_search_gpus_must_be_a_slice_of_a_node_or_whole_nodes():
    with pytest.raises(ScenarioError, match=r"search.gpus: 12 .* multiple of 8"):
        plan_from_dict(dict(SERVING_PLAN, search={"gpus": [4, 12]}))
    spec = plan_from_dict(dict(SERVING_PLAN, search={"gpus": [1, 8, 16]}))
    assert cluster_sizes(spec) == [(1, 1), (1, 8), (2, 8)]


def test_serving_slo_on_a_training_plan_is_an_error():
    with pytest.raises(ScenarioError, match=r"constraints.ttft_p99_s: .*stage: inference"):
        plan_from_dict(dict(PLAN, constraints={"ttft_p99_s": 1.0}))


def test_plan_cli_prints_why_not_when_no_layout_meets_the_slos(tmp_path):
    import os
    import subprocess

    import yaml

    tight = dict(SERVING_PLAN, constraints={"tpot_p99_s": 0.002},
                 search=dict(SERVING_PLAN["search"], gpus=[4]))  # fmt: skip
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(tight))
    exe = Path(sys.executable).parent / "moesim"  # the interpreter's own entry point
    out = subprocess.run(
        [str(exe), "plan", str(path)],
        capture_output=True, text=True, check=True, env=os.environ | {"COLUMNS": "200"},
    )  # fmt: skip
    assert "no configuration meets the constraints" in out.stdout
    assert "> SLO 2 ms" in out.stdout and "why not" in out.stdout


def test_serving_search_tries_the_engine_knobs():
    """search.max_num_seqs / max_num_batched_tokens multiply the serving layouts: each candidate
    carries its engine limits (moesim's names set, the vLLM aliases dropped) and says them."""
    spec = plan_from_dict(
        {
            **SERVING_PLAN,
            "workload": {**SERVING_PLAN["workload"], "max_num_seqs": 128},
            "search": {
                **SERVING_PLAN["search"],
                "gpus": [2],
                "ep": [1],
                "max_num_seqs": [64, 256],
                "max_num_batched_tokens": [2048, 8192],
            },
        }
    )
    _, cands = candidates(spec)
    got = {(c.workload.max_batch_size, c.workload.max_prefill_tokens) for c in cands}
    assert got == {(64, 2048), (64, 8192), (256, 2048), (256, 8192)}
    assert all(c.name.endswith(f"tok{c.workload.max_prefill_tokens}]") for c in cands)
    assert any(" seqs64 " in c.name for c in cands)


def test_rows_say_the_engine_was_searched_whatever_follows_in_the_name():
    """A row shows its engine limits when the plan searched them, also when two-batch overlap
    adds a suffix to the name (the flag once came from the name's last token)."""
    search = {**SERVING_PLAN["search"], "gpus": [2], "ep": [2], "max_num_seqs": [64]}
    plan = {**SERVING_PLAN, "search": {**search, "two_batch_overlap": [False, True]}}
    rows = [c.row() for c in run_plan(plan_from_dict(plan)).simulated]
    assert any(r["name"].endswith(" tbo]") for r in rows)
    assert rows and all(r["engine_searched"] for r in rows)
    plain = {**SERVING_PLAN, "search": {**SERVING_PLAN["search"], "gpus": [2], "ep": [1]}}
    assert not any(c.row()["engine_searched"] for c in run_plan(plan_from_dict(plain)).simulated)


# -- the serving engine's knobs in a plan ---------------------------------------------------------
def test_serving_plan_searches_two_batch_overlap():
    plan = {
        **SERVING_PLAN,
        "search": {**SERVING_PLAN["search"], "two_batch_overlap": [False, True]},
    }
    considered, scenarios = candidates(plan_from_dict(plan))
    assert considered == 3 * 3 * 2
    both = {s.workload.two_batch_overlap for s in scenarios}
    assert both == {False, True}
    assert sum(s.name.endswith(" tbo]") for s in scenarios) == len(scenarios) // 2


@pytest.mark.parametrize("scheduler", ["prefill_first", "vllm_v1"])
def test_tpot_bound_holds_under_speculative_decoding(scheduler):
    """With a speculative step yielding up to k+1 tokens the weights-read bound shrinks by the
    expected tokens per step and stays below the simulated TPOT."""
    from moesim.sim.run import simulate

    spec = {"method": "draft", "draft_model": "mistral-7b", "num_speculative_tokens": 3,
            "acceptance_rate": 1.0}  # fmt: skip
    wl = {**SERVING_PLAN["workload"], "speculative": spec, "duration_s": 2}
    wl["scheduler"] = scheduler
    _, scenarios = candidates(plan_from_dict({**SERVING_PLAN, "workload": wl}))
    s = next(x for x in scenarios if x.gpus == 2)
    plain = next(
        x
        for x in candidates(plan_from_dict(SERVING_PLAN))[1]
        if x.name.endswith("[2 GPUs tp2 pp1 ep1]")
    )
    assert tpot_lower_bound_s(s) == pytest.approx(tpot_lower_bound_s(plain) / 4)
    assert tpot_lower_bound_s(s) <= simulate(s).tpot_s_p50


# -- speculative decoding's drafts per step in a serving plan ------------------------------------
def _speculative_plan(acceptance: float, ks: list[int] | None) -> dict:
    spec = {"method": "draft", "draft_model": "mistral-7b", "num_speculative_tokens": 2,
            "acceptance_rate": acceptance}  # fmt: skip
    wl = {**SERVING_PLAN["workload"], "speculative": spec, "duration_s": 1}
    search = {**SERVING_PLAN["search"], "gpus": [2], "ep": [2]}
    if ks is not None:
        search["num_speculative_tokens"] = ks
    return {**SERVING_PLAN, "workload": wl, "search": search, "objective": "time",
            "constraints": {}}  # fmt: skip


def test_serving_plan_searches_the_drafts_per_step():
    considered, cands = candidates(plan_from_dict(_speculative_plan(0.0, [1, 3, 5])))
    assert considered == 3
    assert sorted(c.workload.speculative.num_speculative_tokens for c in cands) == [1, 3, 5]
    assert all(
        c.name.endswith(f" k{c.workload.speculative.num_speculative_tokens}]") for c in cands
    )
    assert all(c.workload.speculative.acceptance_rate == 0.0 for c in cands)
    # left out, the workload's own k
    _, one = candidates(plan_from_dict(_speculative_plan(0.0, None)))
    assert [c.workload.speculative.num_speculative_tokens for c in one] == [2]


def test_with_every_draft_rejected_the_plan_picks_the_fewest_drafts():
    # acceptance 0: each step yields one token whatever k, and more drafts only cost
    result = run_plan(plan_from_dict(_speculative_plan(0.0, [3, 1, 5])))
    rows = [c.row() for c in result.best]
    assert {r["num_speculative_tokens"] for r in rows} == {1, 3, 5}
    assert rows[0]["num_speculative_tokens"] == 1
    tpot = [r["tpot_s_p99"] for r in sorted(rows, key=lambda r: r["num_speculative_tokens"])]
    assert tpot == sorted(tpot)


def test_searching_drafts_needs_speculative_decoding():
    plan = {**SERVING_PLAN, "search": {**SERVING_PLAN["search"], "num_speculative_tokens": [1, 2]}}
    with pytest.raises(ScenarioError, match=r"search\.num_speculative_tokens: .*speculative"):
        plan_from_dict(plan)
    bad = _speculative_plan(0.5, [0, 2])
    with pytest.raises(ScenarioError, match="num_speculative_tokens"):
        plan_from_dict(bad)
