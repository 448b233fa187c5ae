"""Activation offload to host (``parallel.activation_offload_layers``; moesim.sim.training_step
ActivationOffload, analytic.activation_memory.offloaded_layers): less activation memory, PCIe copies
overlapped with compute, their excess exposed."""

from __future__ import annotations

import pytest
from sim_scenarios import build

from moesim.scenario_io import ScenarioError
from moesim.sim.run import simulate

H100 = {"name": "h100-pcie-x", "bf16_TFLOPS": 989.4, "fp8_TFLOPS": 1978.9, "fp32_TFLOPS": 66.9}
H100 |= {"hbm_GB": 80, "hbm_TBps": 3.35, "intra_node": {"bandwidth_GBps": 450}}


def _run(offload: int, pcie_GBps: float = 64.0, **parallel):
    gpu = {**H100, "pcie_GBps": pcie_GBps}
    s = build(parallel={"activation_offload_layers": offload, **parallel}, cluster={"gpu": gpu})
    return simulate(s)


@pytest.mark.parametrize("schedule", [{}, {"schedule": "dualpipe"}])
def test_offloading_more_layers_keeps_less_and_is_never_faster(schedule: dict) -> None:
    runs = [_run(n, **schedule) for n in (0, 1, 4)]
    acts = [r.memory_per_gpu_GB["activations"] for r in runs]
    steps = [r.step_time_s for r in runs]
    assert acts[0] > acts[1] > acts[2]
    assert steps[0] <= steps[1] <= steps[2]
    assert runs[0].time_breakdown_s["offload"] == 0.0 < runs[1].time_breakdown_s["offload"]


def test_a_slow_host_link_exposes_the_copies() -> None:
    """At 64 GB/s the copies of one layer hide under the next layers' compute; at 2 GB/s
    they cannot, and the step grows by about what they take beyond the compute."""
    fast, slow, none = _run(4), _run(4, pcie_GBps=2.0), _run(0, pcie_GBps=2.0)
    assert fast.step_time_s < 1.01 * none.step_time_s
    assert slow.step_time_s > 1.5 * none.step_time_s
    assert slow.time_breakdown_s["offload"] == pytest.approx(
        32 * fast.time_breakdown_s["offload"], rel=1e-6
    )


def test_symmetric_and_full_fidelity_agree_with_offload() -> None:
    gpu = {**H100, "pcie_GBps": 8.0}
    s = build(parallel={"activation_offload_layers": 2}, cluster={"gpu": gpu})
    sym, full = simulate(s, fidelity="symmetric"), simulate(s, fidelity="full")
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=0.02)


def test_offloading_a_whole_chunk_is_refused_with_the_fix() -> None:
    with pytest.raises(ScenarioError, match="activation_offload_layers"):
        _run(16)  # mixtral on pp 2: 16 layers per stage
