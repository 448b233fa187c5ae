"""Validation: errors computed right on hand-made cases, the split, op predictions."""

import pandas as pd
import pytest

from moesim.calibrate.predict import predict_op
from moesim.calibrate.records import COLUMNS
from moesim.calibrate.validate import error_stats, scored_rows, split
from moesim.catalog import load_gpu
from moesim.sim.costmodel import CostModel
from moesim.sim.profile import Profile, default_profile


def test_error_stats_by_hand():
    s = error_stats([1.0, 2.0, 4.0], [1.1, 1.0, 4.0])  # errors 0.1, 0.5, 0
    assert s["median_abs_rel_error"] == pytest.approx(0.1)
    assert s["max_abs_rel_error"] == pytest.approx(0.5)
    assert s["n"] == 3
    assert error_stats([], [])["n"] == 0


def _rows(spec):
    rows = []
    for cls, n in spec:
        for i in range(n):
            r = dict.fromkeys(COLUMNS)
            r.update(op=cls, op_class=cls, dtype="fp32", time_s_median=1.0 + i)
            r["pass"] = "fwd"
            rows.append(r)
    return pd.DataFrame(rows, columns=COLUMNS)


def test_split_holds_out_a_fraction_and_every_unfitted_row():
    df = _rows([("gemm", 10), ("attention", 3), ("launch", 3), ("moe_layer", 4), ("step", 2)])
    train, test = split(df, holdout=0.3, seed=1)
    assert len(train) + len(test) == len(df)
    held = test["op_class"].value_counts().to_dict()
    assert held == {"gemm": 3, "attention": 1, "moe_layer": 4, "step": 2}
    assert set(train["op_class"]) == {"gemm", "attention", "launch"}
    # deterministic for a seed
    assert split(df, 0.3, 1)[1].equals(test)


def test_other_dtypes_are_not_scored():
    df = _rows([("gemm", 2), ("copy", 1)])
    df.loc[0, "dtype"] = "bf16"
    df.loc[2, "dtype"] = "bf16"  # copies are not a compute class: kept
    kept = scored_rows(df, "fp32")
    assert len(kept) == 2 and (kept["op_class"] == "copy").sum() == 1


def test_predict_op_follows_the_simulator_convention():
    gpu = load_gpu("h100-sxm")
    flat = {"x": "flops", "points": [[1.0, 0.5]], "source": "test"}
    prof = default_profile().model_dump()
    prof["compute"] = {c: flat for c in prof["compute"]}
    prof["launch_overhead_us"] = {"value": 0.0, "source": "test"}
    cm = CostModel(gpu, Profile.model_validate(prof), "bf16")
    peak = gpu.bf16_TFLOPS * 1e12
    f = 1e12
    fwd = {"op": "gemm", "op_class": "gemm", "pass": "fwd", "flops": f, "bytes": 1.0, "groups": 1}
    assert predict_op(fwd, cm) == pytest.approx(f / (0.5 * peak))
    # fwd_bwd rows hold 3× the forward: forward + backward of twice the FLOPs
    both = fwd | {"pass": "fwd_bwd", "flops": 3 * f, "op_class": "grouped_gemm", "groups": 8}
    assert predict_op(both, cm) == pytest.approx(3 * f / (0.5 * peak))


def test_host_copies_are_predicted_over_the_pcie_link():
    """At the fitted fraction of the nominal PCIe bandwidth; at the nominal one where the
    profile has no ``links.pcie`` (no host copies measured)."""
    gpu = load_gpu("h100-sxm")
    prof = default_profile().model_dump()
    prof["launch_overhead_us"] = {"value": 0.0, "source": "test"}
    r = {"op": "h2d", "op_class": "host_copy", "pass": "fwd", "flops": 0.0, "bytes": 1e9}
    prof["links"]["pcie"] = None
    cm = CostModel(gpu, Profile.model_validate(prof), "bf16")
    assert cm.link_fraction("pcie") == 1.0
    assert predict_op(r, cm) == pytest.approx(1e9 / (gpu.pcie_GBps * 1e9))
    prof["links"]["pcie"] = {"value": 0.5, "source": "test"}
    cm = CostModel(gpu, Profile.model_validate(prof), "bf16")
    assert cm.link_fraction("pcie") == 0.5
    assert predict_op(r, cm) == pytest.approx(1e9 / (0.5 * gpu.pcie_GBps * 1e9))


def test_split_keeps_a_row_of_every_fitted_class_in_the_fit():
    df = _rows([("gemm", 2), ("copy", 3)])
    train, _ = split(df, holdout=0.95, seed=0)
    assert set(train["op_class"]) == {"gemm", "copy"}


def _cpu_measurements() -> pd.DataFrame:
    """fp32 GEMMs and d2d copies whose rates differ row by row, plus launches."""
    rows = []
    for i in range(10):
        n = 256 + 64 * i
        rows.append(
            {
                "op": "gemm",
                "op_class": "gemm",
                "m": n,
                "n": n,
                "k": n,
                "flops": 2.0 * n**3,
                "time_s_median": 2.0 * n**3 / (50e9 + 5e9 * i),
            }
        )
    for i in range(6):
        b = 2**20 * 4**i
        rows.append(
            {
                "op": "d2d",
                "op_class": "copy",
                "bytes": float(b),
                "time_s_median": b / (10e9 + 2e9 * i),
            }
        )
    for _ in range(2):
        rows.append({"op": "launch", "op_class": "launch", "bytes": 4.0, "time_s_median": 5e-6})
    out = []
    for r in rows:
        full = dict.fromkeys(COLUMNS)
        full.update(device="cpu", dtype="fp32", flops=0.0, bytes=0.0, note="", repeats=5)
        full.update(r)
        full["pass"] = "fwd"
        full["time_s_p10"] = full["time_s_p90"] = full["time_s_median"]
        out.append(full)
    return pd.DataFrame(out, columns=COLUMNS)


def test_validation_takes_the_cpu_peaks_from_the_fitting_rows_only(tmp_path, monkeypatch):
    """The CPU's device spec (peak = best GEMM rate, HBM = best copy) is derived again from the
    fitting rows: the held-out fastest GEMM and copy must not set the scale they are predicted
    on. The committed spec (from all rows) stays what the full profile is fitted with."""
    import yaml

    from moesim.calibrate import validate
    from moesim.calibrate.fit import fit_profile
    from moesim.calibrate.run import measured_cpu_spec
    from moesim.specs import GPUSpec

    df = _cpu_measurements()
    train, test = split(df, 0.3, 0)
    # make a held-out GEMM and a held-out copy the fastest of all
    for cls, col in (("gemm", "flops"), ("copy", "bytes")):
        held = test[test["op_class"] == cls].iloc[0]
        i = df.index[(df["op"] == held["op"]) & (df[col] == held[col])][0]
        df.loc[i, "time_s_median"] /= 10
    (tmp_path / "cpu").mkdir()
    df.to_csv(tmp_path / "cpu" / "measurements.csv", index=False)
    spec = measured_cpu_spec(df, "test cpu", "2026-01-01", 8.0)
    (tmp_path / "cpu.device.yaml").write_text(yaml.safe_dump(spec))
    gpu = GPUSpec.model_validate(spec)
    prof = fit_profile(df, gpu, dtype="fp32", device_id="cpu", environment={"date": "x"})
    path = validate.write_profile(tmp_path / "cpu.json", prof)
    seen = []
    real = validate.predict_all

    def spy(test_rows, gpu, *args):
        seen.append(gpu)
        return real(test_rows, gpu, *args)

    monkeypatch.setattr(validate, "predict_all", spy)
    val = validate.validate_profile(path, seed=0, report=tmp_path / "r.html")
    train, test = split(df, 0.3, 0)
    g = train[train["op_class"] == "gemm"]
    c = train[train["op_class"] == "copy"]
    best_fit_gemm = (g["flops"] / g["time_s_median"]).max()
    best_fit_copy = (c["bytes"] / c["time_s_median"]).max()
    assert seen[0].fp32_TFLOPS * 1e12 == pytest.approx(best_fit_gemm)
    assert seen[0].hbm_TBps * 1e12 == pytest.approx(best_fit_copy)
    assert seen[0].fp32_TFLOPS < 0.5 * gpu.fp32_TFLOPS  # the all-rows peak: 10× one GEMM
    assert seen[0].hbm_GB == 8.0
    assert val["gemm"]["n"] == len(test[test["op_class"] == "gemm"])


def test_a_measured_cpu_spec_without_its_measurements_is_an_error(tmp_path):
    """Measurements without d2d copies beside a measured CPU spec: validation cannot derive
    the spec from the fitting rows, and says so (it once fell back to the file, whose peaks
    came from every row, held-out ones included)."""
    import yaml

    from moesim.calibrate import validate
    from moesim.calibrate.fit import fit_profile
    from moesim.calibrate.run import measured_cpu_spec
    from moesim.specs import GPUSpec

    df = _cpu_measurements()
    spec = measured_cpu_spec(df, "test cpu", "2026-01-01", 8.0)
    (tmp_path / "cpu.device.yaml").write_text(yaml.safe_dump(spec))
    no_copies = df[df["op_class"] != "copy"]
    (tmp_path / "cpu").mkdir()
    no_copies.to_csv(tmp_path / "cpu" / "measurements.csv", index=False)
    gpu = GPUSpec.model_validate(spec)
    prof = fit_profile(no_copies, gpu, dtype="fp32", device_id="cpu", environment={"date": "x"})
    path = validate.write_profile(tmp_path / "cpu.json", prof)
    with pytest.raises(RuntimeError, match=r"cpu\.device\.yaml is a measured device spec.*d2d"):
        validate.validate_profile(path, seed=0, report=tmp_path / "r.html")
