"""Capacity planning of training runs: analytic pruning, constraint checks, the Pareto front,
goodput under failures, and the training lower bound against the simulator.

The simulator is replaced by a stand-in whose step time is the analytic bound × 1.5, so these
tests check the search itself; test_plan_through_the_simulator_finds_a_fitting_layout and the
lower-bound test run it through the real simulator. Serving plans: test_plan_serving.py and
test_plan_pd.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from plan_dicts import PLAN

from moesim.analytic.microbatches import sequences_per_step
from moesim.plan import (
    SECONDS_PER_DAY,
    Candidate,
    candidates,
    least_memory_per_gpu_B,
    pareto_front,
    plan_from_dict,
    run_plan,
    step_time_lower_bound_s,
)
from moesim.scenario_io import ScenarioError
from moesim.specs import Result


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
        assert c.memory_GB <= c.scenario.cluster.gpu.hbm_GB


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
