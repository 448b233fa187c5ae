"""Goodput of a long run (moesim/analytic/goodput.py): Daly's published optima, the model's
bounds and monotonicity, and the chosen interval against its neighbours."""

from __future__ import annotations

import math

import pytest

from moesim.analytic.goodput import (
    Goodput,
    daly_interval_s,
    goodput_of,
    job_mtbf_s,
    optimal_interval_s,
    reliability_fields,
    young_interval_s,
)
from moesim.scenario_io import scenario_from_dict

MIN, HOUR = 60.0, 3600.0


@pytest.mark.parametrize(
    ("mtbf_s", "expected_min"), [(24 * HOUR, 117.0), (6 * HOUR, 57.0), (15 * MIN, 9.1)]
)
def test_daly_interval_matches_the_papers_figures(mtbf_s: float, expected_min: float) -> None:
    # Daly 2006 (FGCS 22(3)), Figs. 3-5: delta = 5 min, R = 10 min; tau_opt as printed
    tau_min = daly_interval_s(5 * MIN, mtbf_s) / MIN
    assert tau_min == pytest.approx(expected_min, abs=0.5 if expected_min > 20 else 0.05)


def test_young_is_daly_to_first_order() -> None:
    # delta << M: the higher-order terms vanish, Daly -> sqrt(2 delta M) - delta
    write_s, m = 10.0, 1e7
    young = young_interval_s(write_s, m)
    assert young == pytest.approx(math.sqrt(2 * write_s * m))
    assert daly_interval_s(write_s, m) == pytest.approx(young - write_s, rel=1e-3)


def test_daly_interval_is_the_mtbf_when_a_write_outlasts_two_mtbfs() -> None:
    assert daly_interval_s(300.0, 100.0) == 100.0


def test_goodput_hand_computed() -> None:
    # M = 10 h, tau = 1 h, delta = 0.1 h, R = 0.5 h:
    # (1/1.1) · (1 − 1.1/20) / (1 + 0.05) = 0.9090909 · 0.945 / 1.05 = 0.8181818
    g = Goodput(10 * HOUR, 1 * HOUR, 0.1 * HOUR, 0.5 * HOUR)
    assert g.goodput == pytest.approx(0.9090909 * 0.945 / 1.05, rel=1e-6)


def test_wall_time_fractions_sum_to_one() -> None:
    g = Goodput(3 * HOUR, 1500.0, 45.0, 600.0)
    parts = g.fractions()
    assert sum(parts.values()) == pytest.approx(1.0, rel=1e-12)
    assert parts["useful"] == pytest.approx(g.goodput)
    assert all(v > 0 for v in parts.values())


@pytest.mark.parametrize("write_s", [5.0, 60.0, 600.0])
@pytest.mark.parametrize("mtbf_h", [0.5, 3.0, 50.0])
def test_auto_interval_beats_its_neighbours(write_s: float, mtbf_h: float) -> None:
    """The interval auto picks maximises goodput among its neighbours (±1%, ±10%, ±30%), the
    numerical optimum over a fine grid lies within 0.2% of it, and Daly's higher-order interval
    exceeds it by about delta/3 where delta/M < 1e-2 (the regime of large training jobs)."""
    m = mtbf_h * HOUR
    tau = optimal_interval_s(write_s, m)

    def good(t: float) -> float:
        return Goodput(m, t, write_s, 300.0).goodput

    best = good(tau)
    for k in (0.7, 0.9, 0.99, 1.01, 1.1, 1.3):
        assert good(tau * k) < best, f"tau × {k} beats the chosen interval"
    grid = [tau * (0.5 + i / 2000) for i in range(2001)]
    assert max(grid, key=good) == pytest.approx(tau, rel=2e-3)
    if write_s / m < 1e-2:  # Daly's next term: sqrt(2 delta M) · sqrt(delta/(2M))/3 = delta/3
        assert daly_interval_s(write_s, m) - tau == pytest.approx(write_s / 3, rel=0.05)
    assert young_interval_s(write_s, m) - tau == pytest.approx(write_s)


@pytest.mark.parametrize("interval_s", [60.0, 1800.0, 7200.0])
def test_goodput_at_most_one_and_falls_with_more_failures(interval_s: float) -> None:
    previous = 1.0
    for mtbf_h in (1000.0, 100.0, 10.0, 3.0, 1.0, 0.3):  # more and more failures
        g = Goodput(mtbf_h * HOUR, interval_s, 30.0, 600.0).goodput
        assert 0.0 <= g <= 1.0
        assert g <= previous + 1e-15
        previous = g


def test_auto_interval_goodput_never_rises_with_more_failures() -> None:
    previous = 1.0
    for mtbf_h in (1000.0, 100.0, 10.0, 3.0, 1.0, 0.3):
        m = mtbf_h * HOUR
        g = Goodput(m, optimal_interval_s(30.0, m), 30.0, 600.0).goodput
        assert g <= previous
        previous = g


def test_a_run_whose_segment_outlasts_two_mtbfs_never_completes() -> None:
    g = Goodput(100.0, 250.0, 10.0, 60.0)
    assert not g.completes and g.goodput == 0.0


def test_job_mtbf_divides_by_gpus() -> None:
    assert job_mtbf_s(50_000.0, 16_384) == pytest.approx(50_000 * 3600 / 16_384)


def _dense(**reliability) -> object:
    return scenario_from_dict(
        {
            "name": "dense",
            "model": "llama-3-8b",
            "cluster": {"gpu": "h100-sxm", "nodes": 2, "gpus_per_node": 8},
            "workload": {"stage": "pretrain", "seq_len": 1024, "global_batch": 16,
                         "total_tokens": 1e11},
            "reliability": reliability,
        }
    )  # fmt: skip


def test_write_time_from_checkpoint_bytes_and_bandwidth() -> None:
    # llama-3-8b: 8.03e9 parameters × (2 B bf16 weights + 12 B Adam with fp32 master) ≈ 112 GB
    s = _dense(gpu_mtbf_hours=1000, checkpoint_write_GBps=10, restart_s=600)
    g = goodput_of(s)
    assert g is not None
    assert 10.5 < g.write_s < 12.0  # ≈ 112 GB at 10 GB/s


def test_result_fields_bound_by_throughput() -> None:
    s = _dense(gpu_mtbf_hours=1000, checkpoint_write_s=30, restart_s=600)
    out = reliability_fields(s, 1.0e5, 1e11)
    assert 0 < out["goodput"] <= 1
    assert out["effective_tokens_per_s"] <= 1.0e5
    gpu_hours = 1e11 / 1.0e5 * 16 / 3600
    assert out["effective_gpu_hours"] >= gpu_hours
    assert out["effective_gpu_hours"] == pytest.approx(gpu_hours / out["goodput"])
    detail = out["reliability"]
    assert detail["interruptions"] == pytest.approx(
        detail["run_days"]
        * 24
        * (1 - detail["wall_fraction"]["restart"])
        / detail["job_mtbf_hours"]
    )


def test_a_fixed_interval_is_kept() -> None:
    s = _dense(gpu_mtbf_hours=1000, checkpoint_interval_s=1234, checkpoint_write_s=30, restart_s=0)
    g = goodput_of(s)
    assert g is not None and g.interval_s == 1234


def test_a_lora_checkpoint_holds_the_adapters_only() -> None:
    from moesim.analytic.goodput import checkpoint_bytes
    from moesim.analytic.lora import lora_counts

    d = {
        "name": "lora",
        "model": "llama-3-8b",
        "cluster": {"gpu": "h100-sxm", "nodes": 1},
        "workload": {"stage": "sft", "seq_len": 1024, "global_batch": 8, "lora": {"rank": 16}},
    }
    s = scenario_from_dict(d)
    full = scenario_from_dict({**d, "workload": {**d["workload"], "lora": None}})
    assert checkpoint_bytes(s) == lora_counts(s.model, s.workload.lora).total * 14.0
    assert checkpoint_bytes(s) < 0.01 * checkpoint_bytes(full)
