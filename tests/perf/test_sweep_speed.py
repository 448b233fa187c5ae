"""Benchmark (run on demand: ``make perf``): 10,000 small scenarios through ``moesim sweep`` on
local processes. Goal from issue 7: ≤ 5 minutes on a 2-core machine. Prints the wall time and
the rate so the figure can be quoted from a run."""

from __future__ import annotations

import os
import time

from moesim.sweep import run_sweep, sweep_from_dict

SMALL = {
    "name": "small",
    "model": "mixtral-8x7b",
    "cluster": {"gpu": "h100-sxm", "nodes": 2},
    "parallel": {"pp": 2, "ep": 8},
    "workload": {"stage": "pretrain", "seq_len": 4096, "global_batch": 64},
}


def test_ten_thousand_small_scenarios():
    spec = sweep_from_dict(
        {
            "name": "bench",
            "base": SMALL,
            "grid": {
                "parallel.ep": [1, 2, 4, 8],
                "routing.skew": [round(0.05 * i, 2) for i in range(25)],
                "routing.seed": list(range(25)),
                "parallel.microbatch_size": [1, 2, 4, 8],
            },
            "zip": {"routing.distribution": ["zipf"]},
        }
    )
    assert spec.size == 10_000
    workers = os.cpu_count() or 1
    t0 = time.perf_counter()
    frame = run_sweep(spec, workers=workers)
    wall_s = time.perf_counter() - t0
    ok = frame["error"].isna().sum() if "error" in frame else len(frame)
    print(
        f"\n{len(frame)} scenarios ({ok} simulated) on {workers} processes in {wall_s:.1f} s "
        f"= {len(frame) / wall_s:.0f} scenarios/s"
    )
    assert len(frame) == 10_000
    assert ok == 10_000  # every point simulated: a sweep of errors would be fast and useless
    assert (frame["step_time_s"] > 0).all()
    assert wall_s <= 300
