"""Validation: errors computed right on hand-made cases, the split, op predictions."""

import pandas as pd
import pytest

from moesim.calibrate.records import COLUMNS
from moesim.calibrate.validate import error_stats, predict_op, scored_rows, split
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
