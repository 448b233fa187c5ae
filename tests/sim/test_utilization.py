"""MFU against the bf16 and the compute dtype's peaks, and HFU (moesim.sim.utilization)."""

from __future__ import annotations

import pytest
from sim_scenarios import build

from moesim.analytic.flops import token_flops
from moesim.sim.run import simulate


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_hfu_counts_exactly_the_recomputed_flops(recompute: str) -> None:
    s = build(parallel={"recompute": recompute})
    r = simulate(s)
    fl = token_flops(s.model, s.workload.seq_len)
    assert r.hfu == pytest.approx(r.mfu * fl.hardware_flops(recompute) / fl.model_flops, 1e-12)
    if recompute == "none":
        assert r.hfu == pytest.approx(r.mfu, 1e-12)
    else:
        assert r.hfu > r.mfu
    # bf16 compute: the compute dtype's peak is the bf16 peak
    assert r.mfu_compute_dtype == pytest.approx(r.mfu, 1e-12)


def test_fp8_mfu_against_both_peaks() -> None:
    s = build(precision={"compute": "fp8"})
    r = simulate(s)
    gpu = s.cluster.gpu
    assert r.mfu == pytest.approx(r.model_tflops_per_gpu / gpu.peak_TFLOPS("bf16"), 1e-12)
    assert r.mfu_compute_dtype == pytest.approx(
        r.model_tflops_per_gpu / gpu.peak_TFLOPS("fp8"), 1e-12
    )
    assert r.mfu_compute_dtype < r.mfu  # H100's fp8 peak is twice its bf16 peak
