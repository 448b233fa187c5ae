"""pipeline_balance: auto — the split it searches and the layout it chooses."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_scenarios import build

from moesim.sim.pipeline_balance import min_max_split, rank_loads_s
from moesim.sim.run import simulate
from moesim.specs.pipeline_layout import parse_layout


def _brute_min_max(costs: list[float], parts: int) -> float:
    """The lightest heaviest group over every cut of ``costs`` into ``parts`` non-empty runs."""
    n, best = len(costs), float("inf")
    for cuts in itertools.combinations(range(1, n), parts - 1):
        bounds = (0, *cuts, n)
        best = min(best, max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds)))
    return best


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.01, 10.0), min_size=2, max_size=9),
    st.integers(2, 5),
)
def test_min_max_split_matches_brute_force(costs, parts):
    parts = min(parts, len(costs))
    sizes = min_max_split(costs, parts)
    assert len(sizes) == parts and sum(sizes) == len(costs) and min(sizes) >= 1
    heaviest, i = 0.0, 0
    for size in sizes:
        heaviest = max(heaviest, sum(costs[i : i + size]))
        i += size
    assert heaviest == pytest.approx(_brute_min_max(costs, parts), rel=1e-6)


def test_dualpipe_rank_loads_pair_mirror_positions():
    stages = parse_layout("Et|tt|ttt|tL")  # positions 0–3; ranks 0 and 3 share 0 and 3
    t = {"t": 1.0, "E": 0.0, "L": 0.5}
    loads = rank_loads_s(stages, lambda sym, _: t[sym], 4, dual=True)
    assert loads == [2.5, 5.0, 5.0, 2.5]
    assert rank_loads_s(stages, lambda sym, _: t[sym], 4, dual=False) == [1.0, 2.0, 3.0, 1.5]


CASES = {  # model, parallel, workload: a few shapes of model and schedule
    "mixtral-1f1b-pp4": (
        "mixtral-8x7b",
        {"pp": 4, "ep": 4, "dp": 4, "schedule": "1f1b"},
        {"stage": "pretrain", "seq_len": 1024, "global_batch": 32},
    ),
    "llama-interleaved": (
        "llama-3-8b",
        {"pp": 4, "ep": 1, "dp": 4, "schedule": "interleaved_1f1b", "virtual_stages": 2},
        {"stage": "pretrain", "seq_len": 1024, "global_batch": 32},
    ),
    "deepseek-v2-dualpipe": (  # an MoE with a dense first layer under DualPipe
        "deepseek-v2",
        {"pp": 4, "ep": 4, "dp": 4, "schedule": "dualpipe"},
        {"stage": "pretrain", "seq_len": 512, "global_batch": 32},
    ),
    "qwen3-30b-sft": (
        "qwen3-30b-a3b",
        {"pp": 2, "ep": 8, "dp": 8, "schedule": "1f1b"},
        {"stage": "sft", "seq_len": 1024, "global_batch": 16},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_auto_is_never_slower_than_the_even_layout(case):
    model, parallel, workload = CASES[case]
    base = {"tp": 1, "zero_stage": 1, **parallel}
    even = simulate(build(model=model, parallel=base, workload=workload))
    auto = simulate(
        build(model=model, parallel={**base, "pipeline_balance": "auto"}, workload=workload)
    )
    assert auto.pipeline_balance == "auto" and auto.pipeline_layout
    assert auto.step_time_s <= even.step_time_s * (1 + 1e-9)
    if auto.fits_in_memory is False:
        assert even.fits_in_memory is False  # a layout that does not fit never wins over one


def test_auto_says_what_it_chose_and_that_layout_reproduces_it():
    model, parallel, workload = CASES["mixtral-1f1b-pp4"]
    base = {"tp": 1, "zero_stage": 1, **parallel}
    auto = simulate(
        build(model=model, parallel={**base, "pipeline_balance": "auto"}, workload=workload)
    )
    again = simulate(
        build(
            model=model,
            parallel={**base, "pipeline_layout": auto.pipeline_layout},
            workload=workload,
        )
    )
    assert again.step_time_s == auto.step_time_s
    assert [s["layers"] for s in again.stages] == [s["layers"] for s in auto.stages]


def test_auto_moves_layers_off_a_heavy_head():
    """llama-3-8b on pp 4: the 128k-vocabulary head and loss on the last rank cost about two
    layers, so the even split (8 layers each) waits on the last rank; auto gives it fewer
    layers and most of the imbalance goes."""
    base = {"tp": 1, "zero_stage": 1, "pp": 4, "ep": 1, "dp": 4, "schedule": "1f1b"}
    w = {"stage": "pretrain", "seq_len": 1024, "global_batch": 64}
    even = simulate(build(model="llama-3-8b", parallel=base, workload=w))
    auto = simulate(
        build(model="llama-3-8b", parallel={**base, "pipeline_balance": "auto"}, workload=w)
    )
    assert auto.stages[3]["layers"].count("t") < 8
    assert auto.step_time_s < 0.95 * even.step_time_s
    assert auto.time_breakdown_s["imbalance"] < 0.5 * even.time_breakdown_s["imbalance"]
