"""The result's per-stage table (compute, exposed communication, idle per pipeline rank) and
the split of idle time into the schedule's bubble and the wait for a busier stage
(imbalance): they sum to the step, uneven layouts show as imbalance, and both fidelities
agree stage by stage."""

from __future__ import annotations

import pytest
from sim_scenarios import build

from moesim.scenario_io import ScenarioError
from moesim.sim.run import simulate


def _stage_sums(r) -> None:
    """Each stage's compute + exposed communication + idle is the step; the mean breakdown's
    compute + exposed + bubble + imbalance too; the busiest stage waits for no one."""
    step, tb = r.step_time_s, r.time_breakdown_s
    for row in r.stages:
        total = row["compute_s"] + row["exposed_comm_s"] + row["idle_s"]
        assert total == pytest.approx(step, rel=1e-9)
    parts = tb["compute"] + tb["exposed_comm"] + tb["bubble"] + tb["imbalance"]
    assert parts == pytest.approx(step, rel=1e-9)
    assert tb["bubble"] >= 0 and tb["imbalance"] >= 0
    busiest = max(r.stages, key=lambda row: row["compute_s"] + row["exposed_comm_s"])
    assert busiest["idle_s"] == pytest.approx(tb["bubble"], rel=1e-9)


@pytest.mark.parametrize(
    "parallel",
    [
        {"pp": 2, "schedule": "1f1b", "pipeline_layout": "Et*10|t*22L"},
        {"pp": 2, "schedule": "interleaved_1f1b", "virtual_stages": 2},
        {"pp": 2, "schedule": "dualpipe"},
    ],
)
def test_stage_idle_and_the_bubble_split_sum_to_the_step(parallel):
    r = simulate(build(parallel=parallel))
    assert [row["stage"] for row in r.stages] == [0, 1]
    _stage_sums(r)
    assert r.memory_per_gpu_GB["total"] == pytest.approx(max(x["memory_GB"] for x in r.stages))


def test_an_uneven_layout_shows_as_imbalance_not_bubble():
    even = simulate(build(parallel={"pp": 2}))
    skewed = simulate(build(parallel={"pp": 2, "pipeline_layout": "Et*8|t*24L"}))
    assert skewed.stages[0]["layers"] == "E" + " t" * 8
    assert skewed.time_breakdown_s["imbalance"] > 5 * even.time_breakdown_s["imbalance"]
    assert skewed.step_time_s > even.step_time_s


def _llama(**parallel):
    return build(
        model="llama-3-8b",
        parallel={"tp": 1, "pp": 4, "ep": 1, "dp": 4, **parallel},
        workload={"stage": "pretrain", "seq_len": 1024, "global_batch": 32},
        cluster={"nodes": 2, "gpus_per_node": 8},
    )


def test_first_and_last_stage_layers_move_compute_between_stages():
    """llama-3-8b, 32 layers on pp 4: first 5 / last 9 leave 9 on each middle rank, against 8
    evenly. A middle rank's compute (layers and their optimizer shard) grows by 9/8; the first
    rank's shrinks."""
    even = simulate(_llama()).stages
    uneven = simulate(_llama(first_stage_layers=5, last_stage_layers=9)).stages
    assert [row["layers"].count("t") for row in uneven] == [5, 9, 9, 9]
    assert uneven[1]["compute_s"] / even[1]["compute_s"] == pytest.approx(9 / 8, rel=0.01)
    assert uneven[0]["compute_s"] < 0.7 * even[0]["compute_s"]
    assert uneven[3]["compute_s"] > even[3]["compute_s"]


def test_account_for_embedding_and_loss_run_layers_plus_two_chunks():
    """32 layers + the embedding + the loss on pp·vp = 2·17 = 34 chunks: a chunk each."""
    p = {"pp": 2, "schedule": "interleaved_1f1b", "virtual_stages": 17}
    with pytest.raises(ScenarioError, match="exceeds"):
        _llama(**p, dp=8)
    r = simulate(_llama(**p, dp=8, account_for_embedding=True, account_for_loss=True))
    assert r.stages[0]["layers"].startswith("E | t | t")
    assert r.stages[1]["layers"].endswith("t | L")
    _stage_sums(r)


def test_full_and_symmetric_fidelity_agree_per_stage():
    s = build(parallel={"pp": 2, "pipeline_layout": "Et*14|t*18L"})
    sym, full = simulate(s, fidelity="symmetric"), simulate(s, fidelity="full")
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=0.02)
    assert [x["layers"] for x in sym.stages] == [x["layers"] for x in full.stages]
    for a, b in zip(sym.stages, full.stages, strict=True):
        # symmetric: the EP group's most loaded rank sets every rank's expert time
        assert b["compute_s"] == pytest.approx(a["compute_s"], rel=0.05)
        assert b["idle_s"] == pytest.approx(a["idle_s"], abs=0.02 * sym.step_time_s)
    assert full.time_breakdown_s["imbalance"] == pytest.approx(
        sym.time_breakdown_s["imbalance"], abs=0.02 * sym.step_time_s
    )
