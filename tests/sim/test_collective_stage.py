"""The ``collective`` stage (moesim.sim.collective_stage): one collective over all GPUs with
nccl-tests' algbw/busbw, NCCL's pick, and its input errors."""

from __future__ import annotations

import pytest

from moesim.scenario_io import scenario_from_dict
from moesim.sim.profile import resolve_profile
from moesim.sim.run import SIMULATED_STAGES, simulate


def scenario(collective: str, size: float, nodes: int = 1, gpu: str = "h100-sxm", **sim):
    return scenario_from_dict(
        {
            "name": "coll",
            "model": "tiny-dense",
            "cluster": {"gpu": gpu, "nodes": nodes},
            "workload": {"stage": "collective", "collective": collective, "size_bytes": size},
            "simulation": sim,
        }
    )


def test_the_stage_is_simulated_and_reports_nccl_tests_keys():
    assert "collective" in SIMULATED_STAGES
    d = simulate(scenario("all_reduce", 1e9)).to_json_dict()
    for key in (
        "collective_time_s",
        "algorithm_bandwidth_GBps",
        "bus_bandwidth_GBps",
        "step_time_s",
        "algorithm",
        "protocol",
    ):
        assert key in d, key
    assert d["stage"] == "collective" and d["gpus"] == 8
    assert d["step_time_s"] == d["collective_time_s"]
    # nccl-tests: algbw = size / time, busbw = algbw · 2(n−1)/n for all-reduce
    assert d["algorithm_bandwidth_GBps"] == pytest.approx(1e9 / d["collective_time_s"] / 1e9)
    assert d["bus_bandwidth_GBps"] == pytest.approx(d["algorithm_bandwidth_GBps"] * 14 / 8)


@pytest.mark.parametrize("collective", ["all_gather", "reduce_scatter", "all_to_all"])
def test_bus_bandwidth_is_algbw_times_n_minus_1_over_n(collective):
    r = simulate(scenario(collective, 1e9, nodes=2))
    assert r.gpus == 16
    assert r.bus_bandwidth_GBps == pytest.approx(r.algorithm_bandwidth_GBps * 15 / 16)


def test_318_kB_all_reduce_on_8_gpus_is_latency_bound_and_well_below_43_us():
    """The old model: a ring of 2(n−1) = 14 hops of 3 µs, 43 µs. NCCL's: ring LL, 6.6 µs base +
    14 · 0.6 µs, then 318 kB at min(llMaxBw 141, NVLink/2) · 8/14 GB/s."""
    r = simulate(scenario("all_reduce", 318e3))
    assert (r.algorithm, r.protocol) == ("ring", "LL")
    assert r.collective_time_s == pytest.approx((15.0 + 318e3 / (1000 * 141 * 8 / 14)) * 1e-6)
    assert r.collective_time_s < 25e-6


def test_large_all_gather_reaches_the_nvlink_times_the_simple_fraction():
    r = simulate(scenario("all_gather", 16e9))
    nvlink_GBps = 450 * resolve_profile(None, "h100-sxm").links.nvlink.value
    assert r.protocol == "Simple"
    assert r.bus_bandwidth_GBps == pytest.approx(nvlink_GBps, rel=0.01)
    assert r.bus_bandwidth_GBps < nvlink_GBps


def test_all_to_all_on_one_node_reaches_the_nvlink_port():
    """Every GPU sends (n−1)/n of its buffer through its NVLink port: busbw → the port."""
    r = simulate(scenario("all_to_all", 16e9))
    nvlink_GBps = 450 * resolve_profile(None, "h100-sxm").links.nvlink.value
    assert r.bus_bandwidth_GBps == pytest.approx(nvlink_GBps, rel=0.01)


@pytest.mark.parametrize("size", [1e3, 318e3, 3e7, 4e9])
@pytest.mark.parametrize("nodes", [1, 4])
def test_auto_is_never_slower_than_a_forced_algorithm(size, nodes):
    auto = simulate(scenario("all_reduce", size, nodes=nodes)).collective_time_s
    for algo in ("ring", "tree"):
        forced = simulate(scenario("all_reduce", size, nodes=nodes, all_reduce=algo))
        assert forced.algorithm == algo
        assert auto <= forced.collective_time_s


def test_the_default_all_reduce_is_auto():
    assert scenario("all_reduce", 1e6).simulation.all_reduce == "auto"


def test_time_grows_with_size_for_every_collective():
    for coll in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        times = [simulate(scenario(coll, 4.0**k, nodes=2)).collective_time_s for k in range(3, 17)]
        assert times == sorted(times), coll


@pytest.mark.parametrize("size", [0, -5, float("inf"), float("nan")])
def test_a_bad_size_names_the_field(size):
    with pytest.raises(ValueError, match="size_bytes"):
        scenario("all_reduce", size)


def test_an_unknown_collective_names_the_field():
    with pytest.raises(ValueError, match=r"collective: Input should be 'all_reduce'"):
        scenario("broadcast", 1e6)
