"""Capacity planning: analytic pruning, constraint checks and the Pareto front.

The simulator is replaced by a stand-in whose step time is the analytic bound × 1.5, so these
tests check the search itself; the serving-plan tests at the end,
test_plan_through_the_simulator_finds_a_fitting_layout and the lower-bound tests run it through
the real simulator.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from moesim.analytic.microbatches import sequences_per_step
from moesim.plan import (
    SECONDS_PER_DAY,
    Candidate,
    candidates,
    cluster_sizes,
    least_memory_per_gpu_B,
    pareto_front,
    plan_from_dict,
    run_plan,
    step_time_lower_bound_s,
    tpot_lower_bound_s,
)
from moesim.scenario_io import ScenarioError
from moesim.specs import Result

PLAN = {
    "name": "mixtral-plan",
    "model": "mixtral-8x7b",
    "gpu": "h100-sxm",
    "workload": {"stage": "pretrain", "seq_len": 4096, "global_batch": 512, "total_tokens": 1e11},
    "search": {"nodes": [2, 4, 8], "tp": [1, 2], "pp": [1, 2, 4], "ep": [1, 8]},
    "constraints": {"deadline_days": 30},
    "simulate_max": 500,
}


def _fake_simulate(s, factor: float = 1.5):
    step = factor * step_time_lower_bound_s(s)
    tokens = s.workload.global_batch * s.workload.seq_len
    return Result(
        name=s.name,
        stage="pretrain",
        gpus=s.gpus,
        params_total=1,
        params_active=1,
        model_flops_per_token=1,
        step_time_s=step,
        tokens_per_s=tokens / step,
        fits_in_memory=True,
    )


def test_plan_prunes_layouts_that_do_not_fit():
    result = run_plan(plan_from_dict(PLAN), simulate=_fake_simulate)
    assert result.considered == 3 * 2 * 3 * 2 * 1 * 2 * 2  # nodes·tp·pp·ep·zero·mbs·recompute
    assert 0 < result.fitting < result.considered
    # Mixtral's 93 GB of bf16 weights cannot sit on one GPU without ep or pp
    for c in result.simulated:
        p = c.scenario.parallel
        assert p.ep * p.pp * p.tp > 1
        assert c.memory_GB <= 80


def test_plan_meets_deadline_and_orders_by_cost():
    result = run_plan(plan_from_dict(PLAN), simulate=_fake_simulate)
    assert result.best
    costs = [c.run_cost_usd for c in result.best]
    assert costs == sorted(costs)
    assert all(c.run_days <= 30 for c in result.best)


def test_tight_deadline_excludes_slow_layouts():
    """4 days: 64 GPUs make it (their bound is ~2 days, the stand-in 1.5× that), 32 GPUs pass
    the bound (~3.9 days) but not the simulation, 16 GPUs are pruned by the bound alone."""
    tight = dict(PLAN, constraints={"deadline_days": 4.0})
    result = run_plan(plan_from_dict(tight), simulate=_fake_simulate)
    assert result.best
    assert all(c.run_days <= 4.0 for c in result.best)
    slow = [c for c in result.simulated if c.run_days > 4.0]
    assert slow and all("days" in c.why_not[0] for c in slow)
    assert result.pruned > 0 and result.pruned_by["deadline_days"] == result.pruned


def _bound_days(s) -> float:
    w = s.workload
    return w.total_tokens * step_time_lower_bound_s(s) / (w.global_batch * w.seq_len) / 86_400


def test_few_simulations_under_a_tight_deadline_still_find_a_feasible_layout():
    """simulate_max far below the fitting layouts and a deadline only the largest cluster
    meets: layouts whose lower bound misses it are pruned before ranking, so the cheapest
    (slowest) ones do not take the two simulation slots (they did: best was empty)."""
    spec = plan_from_dict(PLAN)
    _, scenarios = candidates(spec)
    fits = [s for s in scenarios if least_memory_per_gpu_B(s) <= s.cluster.gpu.hbm_GB * 1e9]
    fastest = min(_bound_days(s) for s in fits)
    deadline = 1.75 * fastest  # the stand-in takes 1.5× the bound; half the GPUs take 2×
    tight = dict(PLAN, constraints={"deadline_days": deadline}, simulate_max=2)
    result = run_plan(plan_from_dict(tight), simulate=_fake_simulate)
    assert result.fitting > 10 * tight["simulate_max"]
    assert result.best, result.summary()
    assert all(c.run_days <= deadline for c in result.best)
    assert len(result.simulated) == 2
    assert result.pruned == result.pruned_by["deadline_days"] > 0
    assert result.pruned + len(result.simulated) + result.not_simulated == result.fitting
    d = result.to_json_dict()
    assert d["pruned_by_bound"] == result.pruned and "pruned by a lower bound" in d["summary"]
    # the Pareto front is made of simulated points only
    assert result.pareto and all(c in result.simulated and c.result for c in result.pareto)


def test_budget_prunes_by_the_cost_bound():
    spec = plan_from_dict(PLAN)
    _, scenarios = candidates(spec)
    fits = [s for s in scenarios if least_memory_per_gpu_B(s) <= s.cluster.gpu.hbm_GB * 1e9]
    costs = sorted(_bound_days(s) * 24 * s.gpus * s.cost.usd_per_gpu_hour for s in fits)
    budget = 1.1 * costs[0]  # full recomputation (~4/3 the FLOPs) and deep bubbles cost more

    def exact(s):  # a stand-in at the bound itself: what the bound lets through can meet it
        return _fake_simulate(s, factor=1.0)

    result = run_plan(plan_from_dict(dict(PLAN, constraints={"budget_usd": budget})),
                      simulate=exact)  # fmt: skip
    assert 0 < result.pruned_by["budget_usd"] == result.pruned < result.fitting
    assert result.best and all(c.run_cost_usd <= budget for c in result.best)


# -- the bounds are lower bounds of the simulator ------------------------------------------------
LOWER_BOUND_PLANS = [
    ("mixtral-8x7b", {"stage": "pretrain", "seq_len": 4096, "global_batch": 256},
     {"nodes": [2, 8], "tp": [1, 4], "pp": [1, 2, 4], "ep": [1, 8], "microbatch_size": [1, 2],
      "recompute": ["selective", "full"]}),
    ("llama-3-8b", {"stage": "pretrain", "seq_len": 4096, "global_batch": 64},
     {"nodes": [1], "tp": [1, 2], "pp": [2, 4], "recompute": ["none", "full"],
      "schedule": ["1f1b", "gpipe", "dualpipe"]}),
    ("mixtral-8x7b", {"stage": "sft", "seq_len": 2048, "global_batch": 64,
                      "packing_efficiency": 0.8, "lora": {"rank": 16, "targets": ["attention"]}},
     {"nodes": [1, 2], "tp": [1, 2], "pp": [1, 2], "ep": [8], "recompute": ["selective"]}),
    ("llama-3-8b", {"stage": "dpo", "seq_len": 2048, "global_batch": 32},
     {"nodes": [1], "tp": [1, 2], "pp": [1, 2], "recompute": ["selective", "full"]}),
    ("switch-base-128", {"stage": "pretrain", "seq_len": 512, "global_batch": 256},
     {"nodes": [1], "tp": [1], "pp": [1], "ep": [8], "microbatch_size": [4],
      "recompute": ["none"]}),  # a capacity factor: dropped copies
]  # fmt: skip


def _sample_layouts():
    out = []
    for model, workload, search in LOWER_BOUND_PLANS:
        spec = plan_from_dict({"name": "lb", "model": model, "gpu": "h100-sxm",
                               "workload": workload | {"total_tokens": 1e10}, "search": search,
                               "simulate_max": 1})  # fmt: skip
        _, scenarios = candidates(spec)
        fits = [s for s in scenarios if least_memory_per_gpu_B(s) <= s.cluster.gpu.hbm_GB * 1e9]
        out += fits[:: max(1, len(fits) // 6)]  # a spread over the layouts
    interleaved = dict(out[0].model_dump(mode="json"), name="interleaved")
    interleaved["parallel"] = {"tp": 1, "pp": 4, "ep": 4, "virtual_stages": 2,
                               "schedule": "interleaved_1f1b"}  # fmt: skip
    from moesim.scenario_io import scenario_from_dict

    interleaved.pop("gpus", None)
    return [*out, scenario_from_dict(interleaved)]


def test_training_lower_bound_never_exceeds_the_simulated_step():
    """The bound prunes only if it is one: on a spread of layouts, stages (pretrain, SFT with
    LoRA and packing, DPO), schedules (1F1B, GPipe, DualPipe, interleaved), recomputation and
    a dropping MoE, bound ≤ simulated step time and bound run days ≤ simulated run days."""
    from moesim.sim.run import simulate

    layouts = _sample_layouts()
    assert len(layouts) >= 20
    assert {s.parallel.schedule for s in layouts} >= {"1f1b", "gpipe", "dualpipe",
                                                      "interleaved_1f1b"}  # fmt: skip
    for s in layouts:
        r = simulate(s)
        bound = step_time_lower_bound_s(s)
        assert 0 < bound <= r.step_time_s, s.name
        sim_days = s.workload.total_tokens / r.tokens_per_s / SECONDS_PER_DAY
        tokens_per_step = sequences_per_step(s) * s.workload.seq_len  # DPO: both completions
        bound_days = s.workload.total_tokens * bound / tokens_per_step / SECONDS_PER_DAY
        assert bound_days <= sim_days, s.name


def test_pareto_front_is_non_dominated():
    def cand(days, cost):
        c = Candidate(scenario=None, memory_GB=0, bound_step_s=0)  # type: ignore[arg-type]
        c.result = _r()
        c.run_days, c.run_cost_usd = days, cost
        return c

    pts = [cand(1, 10), cand(2, 5), cand(3, 6), cand(4, 1), cand(1.5, 12)]
    front = pareto_front(pts)
    assert [(c.run_days, c.run_cost_usd) for c in front] == [(1, 10), (2, 5), (4, 1)]


def _r():
    return Result(name="x", stage="pretrain", gpus=1, params_total=1, params_active=1,
                  model_flops_per_token=1, step_time_s=1.0)  # fmt: skip


def test_plan_errors_name_the_key():
    with pytest.raises(ScenarioError, match="gpu"):
        plan_from_dict({k: v for k, v in PLAN.items() if k != "gpu"})
    with pytest.raises(ScenarioError, match="objective"):
        plan_from_dict(dict(PLAN, objective="speed"))
    with pytest.raises(ScenarioError, match="unknown plan keys"):
        plan_from_dict(dict(PLAN, serch={}))


def test_plan_through_the_simulator_finds_a_fitting_layout(tmp_path):
    """A small search simulated for real: every reported layout fits and meets the deadline,
    and the CLI prints the same best configuration as JSON."""
    import json
    import subprocess

    import yaml

    small = dict(PLAN, search={"nodes": [2, 4], "tp": [1], "pp": [1, 2], "ep": [8],
                               "microbatch_size": [1], "recompute": ["selective"]},
                 simulate_max=8)  # fmt: skip
    result = run_plan(plan_from_dict(small))
    assert result.best
    for c in result.best:
        assert c.result.fits_in_memory and c.run_days <= 30
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(small))
    exe = Path(sys.executable).parent / "moesim"  # the interpreter's own entry point
    out = subprocess.run(
        [str(exe), "plan", str(path), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    got = json.loads(out.stdout)
    assert got["best"][0]["name"] == result.best[0].scenario.name


# -- serving plans, through the inference simulator ----------------------------------------------
SERVING_PLAN = {
    "name": "mixtral-serving",
    "model": "mixtral-8x7b",
    "gpu": "h100-sxm",
    "precision": {"compute": "bf16", "weights_inference": "bf16", "kv_cache": "bf16"},
    "workload": {"stage": "inference", "prompt_len": 512, "output_len": 64,
                 "arrival_rate_per_s": 60, "duration_s": 10, "seed": 0},
    "search": {"gpus": [2, 4, 8], "tp": [2], "pp": [1], "ep": [1, 2, 4]},
    "constraints": {"ttft_p99_s": 1.0, "tpot_p99_s": 0.02},
    "simulate_max": 20,
}  # fmt: skip


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


# -- reliability: goodput beside throughput ---------------------------------------------------
RELIABILITY = {"gpu_mtbf_hours": 2000, "checkpoint_write_s": 60, "restart_s": 900}


def _fake_with_goodput(s):
    from moesim.analytic.goodput import reliability_fields

    r = _fake_simulate(s)
    for k, v in reliability_fields(s, r.tokens_per_s, s.workload.total_tokens).items():
        setattr(r, k, v)
    return r


def test_reliability_plan_counts_failures_in_run_days_and_bounds():
    plain = run_plan(plan_from_dict(PLAN), simulate=_fake_simulate)
    failing = run_plan(plan_from_dict(dict(PLAN, reliability=RELIABILITY)), _fake_with_goodput)
    days = {c.scenario.name: c.run_days for c in plain.simulated}
    assert failing.simulated
    by_gpus: dict[int, float] = {}
    for c in failing.simulated:
        r = c.result
        assert 0 < r.goodput < 1
        assert c.run_days == pytest.approx(days[c.scenario.name] / r.goodput)
        assert c.bound_run_days <= c.run_days  # the bound divided by goodput is still a bound
        row = c.row()
        assert row["goodput"] == r.goodput
        assert row["effective_tokens_per_s"] <= row["tokens_per_s"]
        by_gpus.setdefault(c.scenario.gpus, r.goodput)
        assert by_gpus[c.scenario.gpus] == r.goodput  # goodput depends on the GPUs alone
    sizes = sorted(by_gpus)
    assert [by_gpus[g] for g in sizes] == sorted(by_gpus.values(), reverse=True)  # more GPUs, less


def test_reliability_plan_picks_the_interval_per_cluster_size():
    result = run_plan(plan_from_dict(dict(PLAN, reliability=RELIABILITY)), _fake_with_goodput)
    intervals = {c.scenario.gpus: c.row()["checkpoint_interval_s"] for c in result.simulated}
    assert len(set(intervals.values())) == len(intervals) > 1
    small, large = min(intervals), max(intervals)
    # sqrt(2·δ·M) − δ with M = MTBF / GPUs: fewer GPUs, longer MTBF, longer interval
    assert intervals[small] > intervals[large]


def test_plan_carries_the_nvlink_domain_and_fabric_into_every_candidate():
    fabric = {"kind": "top_of_rack", "leaf_nodes": 2, "leaf_oversubscription": 2.0}
    spec = plan_from_dict(dict(PLAN, nvlink_domain_gpus=16, fabric=fabric))
    _, built = candidates(spec)
    assert built and all(s.cluster.domain_gpus == 16 for s in built)
    assert all(s.cluster.fabric.leaf_oversubscription == 2.0 for s in built)


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


PD_PLAN = {
    **SERVING_PLAN,
    "name": "mixtral-pd",
    "workload": {"stage": "inference", "prompt_len": 1024, "output_len": 64,
                 "arrival_rate_per_s": 20, "duration_s": 4, "seed": 0,
                 "disaggregated": {"prefill": {"gpus": 2, "tp": 2, "etp": 2},
                                   "decode": {"gpus": 2, "tp": 2, "etp": 2}}},
    "search": {"prefill": {"gpus": [2, 4]}, "decode": {"gpus": [2, 4, 6], "ep": [1, 2]}},
    "constraints": {"ttft_p99_s": 1.0, "tpot_p99_s": 0.015},
}  # fmt: skip


def test_a_disaggregated_plan_searches_its_pools():
    spec = plan_from_dict(PD_PLAN)
    considered, scenarios = candidates(spec)
    assert considered == 2 * 3 * 2
    seen = set()
    for s in scenarios:
        pools = s.workload.disaggregated
        pre, dec = pools.prefill, pools.decode
        assert pre.gpus in (2, 4) and dec.gpus in (2, 4, 6) and dec.ep in (1, 2)
        assert pre.tp == dec.tp == 2 and pre.ep == 1  # the base pools' values
        assert s.gpus == pre.gpus + dec.gpus
        seen.add((pre.gpus, dec.gpus, dec.ep))
    assert len(seen) == len(scenarios)  # every pairing once
    # ep 2 over 2 or 6 decode GPUs at tp 2 cannot be built (ep·etp must divide tp·dp)
    assert (2, 2, 2) not in seen and (4, 6, 2) not in seen and (2, 4, 2) in seen
    result = run_plan(spec)
    assert result.best and result.rejected  # the 15 ms TPOT rejects decode without ep 2
    for c in result.best:
        row = c.row()
        assert c.meets and c.result.tpot_s_p99 <= 0.015
        assert row["disaggregated"]["decode"]["ep"] == 2
        assert row["gpus"] == sum(row["disaggregated"][k]["gpus"] for k in ("prefill", "decode"))
        assert row["tp"] is None  # the colocated columns do not apply
        assert row["disaggregated"]["bottleneck"] in ("prefill", "decode")
    best = result.best[0].row()
    assert (best["gpus"], best["usd_per_hour"]) == (6, 12.0)  # the fewest GPUs that meet both
    for c in result.simulated:  # the bounds stay below what the simulator says
        assert tpot_lower_bound_s(c.scenario) <= c.result.tpot_s_p50
        pools = c.result.disaggregated
        used = max(pools[k]["memory_per_gpu_GB"]["total"] for k in ("prefill", "decode"))
        assert least_memory_per_gpu_B(c.scenario) <= used * 1e9


def test_a_disaggregated_plan_searches_the_decode_pools_drafts_per_step():
    spec = {"method": "draft", "draft_model": "mistral-7b", "num_speculative_tokens": 2,
            "acceptance_rate": 0.7}  # fmt: skip
    plan = {**PD_PLAN, "workload": {**PD_PLAN["workload"], "speculative": spec},
            "search": {**PD_PLAN["search"], "num_speculative_tokens": [1, 3]}}  # fmt: skip
    considered, scenarios = candidates(plan_from_dict(plan))
    base_considered, base = candidates(plan_from_dict(PD_PLAN))
    assert considered == 2 * base_considered and len(scenarios) == 2 * len(base)
    for s in scenarios:
        k = s.workload.speculative.num_speculative_tokens
        assert k in (1, 3) and s.name.endswith(f" k{k}]")
        assert s.workload.disaggregated is not None


def test_pool_knobs_need_a_disaggregated_workload_and_colocated_knobs_a_colocated_one():
    with pytest.raises(ScenarioError, match=r"search\.prefill.*colocated"):
        plan_from_dict({**SERVING_PLAN, "search": {"prefill": {"gpus": [2, 4]}}})
    with pytest.raises(ScenarioError, match=r"search\.tp.*search\.prefill\.tp"):
        plan_from_dict({**PD_PLAN, "search": {**PD_PLAN["search"], "tp": [1, 2]}})
    with pytest.raises(ScenarioError, match="gpus or nodes"):
        plan_from_dict({**PD_PLAN, "search": {"decode": {"gpus": [2], "nodes": [1]}}})


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
