"""Sweep expansion: grid and zip, dotted keys, names, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.scenario_io import ScenarioError, set_dotted
from moesim.sweep import expand, sweep_from_dict

SCENARIOS = Path(__file__).parent.parent / "scenarios"


def test_grid_crosses_and_zip_varies_together():
    spec = sweep_from_dict(
        {
            "base": "mixtral-8x7b-pretrain-256xh100.yaml",
            "grid": {"parallel.ep": [1, 8], "routing.skew": [0.0, 1.0]},
            "zip": {"cluster.nodes": [16, 32], "parallel.dp": [32, 64]},
        },
        base_dir=SCENARIOS,
    )
    points = list(expand(spec))
    assert spec.size == len(points) == 8
    for params, scenario in points:
        assert scenario["parallel"]["ep"] == params["parallel.ep"]
        assert scenario["cluster"]["nodes"] * 8 == scenario["parallel"]["dp"] * 4  # zipped
        assert scenario["routing"]["skew"] == params["routing.skew"]
    assert len({s["name"] for _, s in points}) == 8


def test_set_dotted_creates_and_refuses_non_mappings():
    d = {"cluster": {"gpu": "h100-sxm"}}
    set_dotted(d, "routing.skew", 1.2)
    assert d["routing"] == {"skew": 1.2}
    with pytest.raises(ScenarioError, match=r"cluster\.gpu\.hbm_GB"):
        set_dotted(d, "cluster.gpu.hbm_GB", 100)


def test_sweep_errors():
    with pytest.raises(ScenarioError, match="base"):
        sweep_from_dict({"grid": {"parallel.ep": [1]}})
    with pytest.raises(ScenarioError, match="non-empty list"):
        sweep_from_dict({"base": {}, "grid": {"parallel.ep": 8}})
    with pytest.raises(ScenarioError, match="same length"):
        sweep_from_dict({"base": {}, "zip": {"a": [1, 2], "b": [1]}})


SMALL = {
    "name": "small",
    "model": "mixtral-8x7b",
    "cluster": {"gpu": "h100-sxm", "nodes": 2},
    "parallel": {"pp": 2, "ep": 8},
    "workload": {"stage": "pretrain", "seq_len": 4096, "global_batch": 64},
}


def _small_sweep():
    return sweep_from_dict(
        {
            "name": "small",
            "base": SMALL,
            "grid": {
                "parallel.ep": [1, 3, 8],  # 3 does not divide 8 experts: an error row
                "routing": [{"distribution": "uniform"}, {"distribution": "zipf", "skew": 1.0}],
            },
        }
    )


def test_sweep_simulates_in_order_and_reports_bad_points():
    from moesim.sweep import run_sweep

    frame = run_sweep(_small_sweep(), workers=1)
    assert len(frame) == 6
    assert list(frame["param.parallel.ep"]) == [1, 1, 3, 3, 8, 8]
    bad = frame[frame["param.parallel.ep"] == 3]
    assert bad["error"].str.contains("parallel.ep").all()
    good = frame[frame["param.parallel.ep"] != 3]
    assert good["step_time_s"].gt(0).all()
    # with experts spread over 8 GPUs, skewed routing makes the busiest GPU slower
    ep8 = good[good["param.parallel.ep"] == 8]["step_time_s"].tolist()
    assert ep8[1] > ep8[0]


def test_sweep_on_local_processes_equals_serial(tmp_path):
    from moesim.sweep import run_sweep, write_frame

    serial = run_sweep(_small_sweep(), workers=1)
    parallel = run_sweep(_small_sweep(), workers=2)
    assert serial.equals(parallel)
    out = write_frame(parallel, tmp_path / "sweep.parquet")
    import pandas as pd

    assert pd.read_parquet(out).shape == parallel.shape


def test_sweep_on_a_dask_cluster_equals_local():
    distributed = pytest.importorskip("dask.distributed")
    from moesim.sweep import run_sweep

    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        on_dask = run_sweep(_small_sweep(), scheduler=cluster.scheduler_address)
    assert on_dask.equals(run_sweep(_small_sweep(), workers=1))


def test_sweep_summary_names_rows_errors_best_and_worst():
    import pandas as pd

    from moesim.sweep import sweep_summary

    frame = pd.DataFrame(
        [
            {"name": "s[ep=1]", "stage": "pretrain", "step_time_s": 3.0, "error": None},
            {"name": "s[ep=2]", "stage": "pretrain", "step_time_s": 2.0, "error": None},
            {"name": "s[ep=3]", "error": "parallel.ep: 3 does not divide 8"},
            {"name": "s[ep=4]", "stage": "pretrain", "step_time_s": 5.0, "error": None},
        ]
    )
    assert sweep_summary(frame) == [
        "4 rows, 1 error",
        "best: s[ep=2] (step_time_s 2, lower is better)",
        "worst: s[ep=4] (step_time_s 5, lower is better)",
    ]
    serving = pd.DataFrame(
        [
            {"name": "a", "stage": "inference", "step_time_s": 0.02, "tokens_per_s_per_gpu": 400},
            {"name": "b", "stage": "inference", "step_time_s": 0.03, "tokens_per_s_per_gpu": 900},
        ]
    )
    assert sweep_summary(serving)[1] == "best: b (tokens_per_s_per_gpu 900, higher is better)"


def test_a_scheduler_address_that_is_not_one_is_a_named_error():
    pytest.importorskip("dask.distributed")
    from moesim.sweep import run_sweep

    with pytest.raises(ScenarioError, match="--scheduler notanaddress: cannot reach"):
        run_sweep(_small_sweep(), scheduler="notanaddress")
