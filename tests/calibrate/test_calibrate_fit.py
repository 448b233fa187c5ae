"""fit(): a known efficiency curve and launch overhead come back from synthetic measurements."""

import math

import pandas as pd
import pytest

from moesim.calibrate.fit import bin_curve, fit_profile, pav, read_measurements
from moesim.calibrate.records import COLUMNS
from moesim.catalog import load_gpu
from moesim.sim.costmodel import CostModel, OpWork
from moesim.sim.profile import Profile

LAUNCH_S = 5e-6


def true_eff(x: float) -> float:
    """A saturating curve: 0.05 at 1e6 FLOPs rising to 0.8 at 1e12 and beyond."""
    return min(0.8, max(0.05, 0.05 + 0.75 * (math.log10(x) - 6) / 6))


def synthetic(gpu, dtype="bf16") -> pd.DataFrame:
    peak = gpu.peak_TFLOPS(dtype) * 1e12
    hbm = gpu.hbm_TBps * 1e12
    rows = []

    def add(**kw):
        r = dict.fromkeys(COLUMNS)
        r.update(device="h100-sxm", dtype=dtype, note="", repeats=10, **kw)
        r["time_s_p10"] = r["time_s_p90"] = r["time_s_median"]
        rows.append(r)

    for i in range(60):
        x = 10 ** (6 + 6 * i / 59)
        t = x / (peak * true_eff(x)) + LAUNCH_S
        add(op="gemm", op_class="gemm", flops=x, bytes=1.0, time_s_median=t, **{"pass": "fwd"})
        # a grouped GEMM of 8 experts, forward + backward: x is one expert's one GEMM
        tg = 24 * x / (peak * true_eff(x)) + LAUNCH_S
        add(
            op="grouped_gemm",
            op_class="grouped_gemm",
            flops=24 * x,
            bytes=1.0,
            groups=8,
            time_s_median=tg,
            **{"pass": "fwd_bwd"},
        )
    for i in range(20):
        b = 10 ** (4 + 5 * i / 19)
        t = b / (hbm * 0.7) + LAUNCH_S
        add(
            op="rmsnorm",
            op_class="memory_bound",
            bytes=b,
            flops=0.0,
            time_s_median=t,
            **{"pass": "fwd"},
        )
        add(
            op="d2d",
            op_class="copy",
            bytes=b,
            flops=0.0,
            time_s_median=b / (hbm * 0.9) + LAUNCH_S,
            **{"pass": "fwd"},
        )
    for _ in range(5):
        add(
            op="launch",
            op_class="launch",
            flops=0.0,
            bytes=4.0,
            time_s_median=LAUNCH_S,
            **{"pass": "fwd"},
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def test_pav_is_the_nondecreasing_fit():
    assert pav([1, 3, 2, 4], [1, 1, 1, 1]) == [1, 2.5, 2.5, 4]
    assert pav([3, 1], [3, 1]) == [2.5, 2.5]
    assert pav([1, 2, 3], [1, 1, 1]) == [1, 2, 3]


def test_bin_curve_clips_into_unit_interval():
    pts = bin_curve([1e3, 1e6, 1e9], [1.7, 0.5, 2.0], monotone=False)
    assert all(0 < y <= 1 for _, y in pts)
    assert [x for x, _ in pts] == sorted(x for x, _ in pts)


def test_fit_recovers_known_curves():
    gpu = load_gpu("h100-sxm")
    prof = Profile.model_validate(
        fit_profile(synthetic(gpu), gpu, dtype="bf16", device_id="h100-sxm", points_per_decade=4)
    )
    assert prof.launch_overhead_us.value == pytest.approx(LAUNCH_S * 1e6)
    # where compute outweighs the launch, the efficiency itself comes back
    for x in (3e9, 1e10, 1e11, 1e12):
        assert prof.compute["gemm"](x) == pytest.approx(true_eff(x), rel=0.06)
        assert prof.compute["grouped_gemm"](x) == pytest.approx(true_eff(x), rel=0.06)
    assert prof.compute["memory_bound"](1e7) == pytest.approx(0.7, rel=0.01)
    assert prof.hbm(1e7) == pytest.approx(0.9, rel=0.01)
    assert "not measured" in prof.compute["attention"].source
    # and the cost model with the fitted profile predicts the synthetic times back
    # (launch-bound sizes included: there the launch overhead carries the time)
    cm = CostModel(gpu, prof, "bf16")
    for x in (3e6, 1e8, 3e9, 1e10, 1e12):
        t = cm.time_s(OpWork("g", "gemm", flops=x, bytes=1.0))
        assert t == pytest.approx(x / (gpu.bf16_TFLOPS * 1e12 * true_eff(x)) + LAUNCH_S, rel=0.06)


PCIE_BYTES_PER_S = 50e9  # what an H100's PCIe Gen5 x16 link reaches per direction, about


def with_host_copies(df: pd.DataFrame, op_class: str) -> pd.DataFrame:
    """``df`` plus h2d and d2h copies at the PCIe speed, more of them than d2d copies (as a
    CUDA calibration has: two host directions per size), under ``op_class``."""
    rows = []
    for op in ("h2d", "d2h"):
        for i in range(20):
            b = 10 ** (4 + 5 * i / 19)
            r = dict.fromkeys(COLUMNS)
            r.update(device="h100-sxm", op=op, op_class=op_class, dtype="fp32", flops=0.0,
                     bytes=b, time_s_median=b / PCIE_BYTES_PER_S + LAUNCH_S, note="",
                     repeats=10)  # fmt: skip
            r["pass"] = "fwd"
            rows.append(r)
    return pd.concat([df, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True)


@pytest.mark.parametrize("label", ["host_copy", "copy"])  # "copy": CSVs written before the class
def test_host_copies_fit_the_pcie_link_not_the_hbm_curve(label, tmp_path):
    """H100-like copies: d2d at 90% of HBM, h2d/d2h at 50 GB/s, read from a CSV (where an old
    CSV's ``copy`` labels become ``host_copy``). The HBM curve comes from d2d alone (~0.9; with
    the PCIe rows in the medians it was ~0.015) and the host link's fitted bandwidth is ~50
    GB/s."""
    gpu = load_gpu("h100-sxm")
    with_host_copies(synthetic(gpu), label).to_csv(tmp_path / "m.csv", index=False)
    df = read_measurements(tmp_path / "m.csv")
    assert set(df[df["op"].isin(["h2d", "d2h"])]["op_class"]) == {"host_copy"}
    prof = Profile.model_validate(
        fit_profile(df, gpu, dtype="bf16", device_id="h100-sxm", points_per_decade=4)
    )
    for b in (1e7, 1e8, 1e9):
        assert prof.hbm(b) == pytest.approx(0.9, rel=0.01)
    assert prof.compute["memory_bound"](1e7) == pytest.approx(0.7, rel=0.01)
    assert prof.links.pcie is not None
    fitted_GBps = prof.links.pcie.value * gpu.pcie_GBps
    assert fitted_GBps == pytest.approx(PCIE_BYTES_PER_S / 1e9, rel=0.01)
    assert "h2d" in prof.links.pcie.source and prof.links.pcie.source.startswith("measured")
    bw = prof.measured["bandwidths_GBps"]
    assert bw["h2d"] == pytest.approx(50, rel=0.01) and bw["d2d"] > 1000
    assert prof.measured["counts"]["host_copy"] == 40


def test_without_host_copies_there_is_no_pcie_figure():
    gpu = load_gpu("h100-sxm")
    prof = Profile.model_validate(fit_profile(synthetic(gpu), gpu, dtype="bf16", device_id="x"))
    assert prof.links.pcie is None


def test_source_names_the_measurements_file_that_was_fitted(tmp_path):
    """The real path: absolute outside the repository, relative to its root inside it."""
    from moesim.sim.profile import repo_root

    gpu = load_gpu("h100-sxm")
    df = synthetic(gpu)
    elsewhere = tmp_path / "x" / "h100-sxm" / "measurements.csv"
    prof = fit_profile(df, gpu, dtype="bf16", device_id="h100-sxm", measurements=elsewhere)
    assert f"fitted from {elsewhere.resolve()} by" in prof["source"]
    assert "calibration/h100-sxm" not in prof["source"]
    root = repo_root()
    if root is None:
        pytest.skip("not running from a source checkout")
    inside = root / "calibration" / "h100-sxm" / "measurements.csv"
    prof = fit_profile(df, gpu, dtype="bf16", device_id="h100-sxm", measurements=inside)
    assert "fitted from calibration/h100-sxm/measurements.csv by" in prof["source"]
