"""Capacity planning: analytic pruning, constraint checks and the Pareto front.

The simulator is replaced by a stand-in whose step time is the analytic bound × 1.5, so these
tests check the search itself; tests/test_plan_sim.py runs it through the real simulator.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.plan import (
    Candidate,
    pareto_front,
    plan_from_dict,
    run_plan,
    step_time_lower_bound_s,
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


def _fake_simulate(s):
    step = 1.5 * step_time_lower_bound_s(s)
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
    tight = dict(PLAN, constraints={"deadline_days": 2.0})
    result = run_plan(plan_from_dict(tight), simulate=_fake_simulate)
    assert all(c.run_days <= 2.0 for c in result.best)
    slow = [c for c in result.simulated if c.run_days > 2.0]
    assert slow and all("days" in c.why_not[0] for c in slow)


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
    exe = Path(__file__).parents[1] / ".venv" / "bin" / "moesim"
    out = subprocess.run(
        [str(exe) if exe.exists() else "moesim", "plan", str(path), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    got = json.loads(out.stdout)
    assert got["best"][0]["name"] == result.best[0].scenario.name
