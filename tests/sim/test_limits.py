"""The simulator's size bounds (issue 16's blow-ups): a cluster of a billion nodes and a step
of 100,000 microbatches at full fidelity on 8,192 GPUs are refused at once with the field to
change; runs inside the bounds, and capped ones, still simulate."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sim_scenarios import build

from moesim.scenario_io import load_scenario, scenario_from_dict
from moesim.sim.limits import (
    MAX_CLUSTER_GPUS,
    MAX_LAYER_PASSES,
    SimulationTooLarge,
    check_simulation_size,
    estimated_cpu_s,
    layer_passes,
)
from moesim.sim.run import simulate

DSV3 = Path(__file__).resolve().parents[2] / "scenarios" / "deepseek-v3-pretrain-2048xh800.yaml"


def _dsv3(**cluster_parallel_workload) -> object:
    d = load_scenario(DSV3).model_dump(mode="json")
    for section, update in cluster_parallel_workload.items():
        d[section].update(update)
    return scenario_from_dict(d)


def test_a_billion_nodes_is_refused_before_anything_is_built():
    s = _dsv3(cluster={"nodes": 1_000_000_000}, parallel={"dp": None},
              workload={"global_batch": 500_000_000})  # fmt: skip
    t0 = time.process_time()
    with pytest.raises(SimulationTooLarge, match=r"cluster\.nodes") as e:
        simulate(s)
    assert time.process_time() - t0 < 1.0  # was killed for memory at 24 GB
    assert f"{MAX_CLUSTER_GPUS:,}" in str(e.value)


def test_the_largest_cluster_allowed_is_not_refused():
    s = _dsv3(cluster={"nodes": MAX_CLUSTER_GPUS // 8}, parallel={"dp": None},
              workload={"global_batch": MAX_CLUSTER_GPUS // 16})  # fmt: skip
    check_simulation_size(s)  # no error (the run itself takes seconds: tests/perf)


def test_full_fidelity_with_100k_microbatches_on_8192_gpus_is_refused_with_the_fixes():
    s = _dsv3(cluster={"nodes": 1024}, parallel={"dp": 512},
              workload={"global_batch": 512 * 100_000})  # fmt: skip
    assert layer_passes(s, "full") == 8192 * 100_000 * 4 * 2  # 61 layers over 16 stages: ⌈3.8⌉
    t0 = time.process_time()
    with pytest.raises(SimulationTooLarge) as e:
        simulate(s, fidelity="full")
    assert time.process_time() - t0 < 1.0
    msg = str(e.value)
    for field in ("symmetric", "simulation.microbatches_simulated", "workload.global_batch"):
        assert field in msg


def test_symmetric_100k_microbatches_is_refused_and_capped_it_simulates():
    s = build(workload={"stage": "pretrain", "seq_len": 1024, "global_batch": 8 * 100_000})
    assert layer_passes(s, "symmetric") > MAX_LAYER_PASSES
    with pytest.raises(SimulationTooLarge, match="microbatches_simulated"):
        simulate(s)
    capped = s.model_copy(
        update={"simulation": s.simulation.model_copy(update={"microbatches_simulated": 16})}
    )
    assert layer_passes(capped, "symmetric") < MAX_LAYER_PASSES
    r = simulate(capped)
    assert r.extrapolated and r.microbatches_total == 100_000


def test_full_fidelity_of_the_2048_gpu_step_is_inside_the_bound():
    s = _dsv3()
    assert layer_passes(s, "full") <= MAX_LAYER_PASSES  # the benchmark of tests/perf runs it


def test_only_long_runs_are_announced():
    s = _dsv3()
    assert estimated_cpu_s(s, "symmetric") < 30  # the usual run prints nothing extra
    assert estimated_cpu_s(s, "full") > 30  # `moesim simulate` says how long, up front


def test_the_vector_engine_raises_the_full_fidelity_bound_by_its_cheaper_passes():
    """Full fidelity on the vector engine costs a tenth per pass: DeepSeek-V3 on 8192 GPUs
    (120 microbatches, 7.9·10⁶ passes) is inside its bound, expert TP (per-rank engine) is
    not, and the estimate is the passes at the vector engine's cost."""
    from moesim.sim.limits import SECONDS_PER_VECTOR_PASS, max_layer_passes

    s = _dsv3(cluster={"nodes": 1024}, parallel={"dp": 512}, workload={"global_batch": 512 * 120})
    assert layer_passes(s, "full") > MAX_LAYER_PASSES
    assert max_layer_passes(s, "full") > MAX_LAYER_PASSES
    check_simulation_size(s, "full")  # no error
    assert estimated_cpu_s(s, "full") == layer_passes(s, "full") * SECONDS_PER_VECTOR_PASS
    etp = _dsv3(cluster={"nodes": 1024}, parallel={"dp": 512, "etp": 2},
                workload={"global_batch": 512 * 120})  # fmt: skip
    with pytest.raises(SimulationTooLarge, match="symmetric"):
        check_simulation_size(etp, "full")


def test_a_fall_back_to_one_process_set_per_rank_is_bounded_at_its_cost():
    """Where the stage's groups differ the context runs every rank on its own (here forced),
    and the step is checked again at that cost once the context knows."""
    from moesim.sim.run import build_context

    s = _dsv3(cluster={"nodes": 1024}, parallel={"dp": 512}, workload={"global_batch": 512 * 120})
    with pytest.raises(SimulationTooLarge, match="symmetric"):
        build_context(s, "full", vector=False)
