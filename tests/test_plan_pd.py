"""Capacity planning of a prefill/decode-disaggregated deployment (``moesim.plan_pd``): every
pairing of the two pools searched, the cheapest that meets the SLOs, the bounds below the
simulator, and the search keys each kind of workload takes."""

from __future__ import annotations

import pytest
from plan_dicts import SERVING_PLAN

from moesim.plan import (
    candidates,
    least_memory_per_gpu_B,
    plan_from_dict,
    run_plan,
    tpot_lower_bound_s,
)
from moesim.scenario_io import ScenarioError

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
