"""Serving with lengths that vary per request: distributions, and replayed traces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.scenario_io import scenario_from_dict
from moesim.sim.run import simulate
from moesim.sim.serving_requests import workload_requests
from moesim.specs.request_trace import read_request_trace


def _scenario(workload: dict, base_dir=None, parallel: dict | None = None):
    d = {
        "name": "serving",
        "model": "tiny-dense",
        "cluster": {"gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 1},
        "parallel": {"zero_stage": 0, "recompute": "none", **(parallel or {})},
        "workload": {"stage": "inference", **workload},
    }
    return scenario_from_dict(d, base=base_dir)


def test_replaying_a_trace_of_fixed_lengths_equals_the_fixed_length_run(tmp_path):
    """The Poisson run's own arrivals written as a trace, same lengths and window: every figure
    of the result is the same."""
    wl = {"prompt_len": 200, "output_len": 20, "arrival_rate_per_s": 40.0, "duration_s": 5.0}
    poisson = _scenario(wl)
    reqs, _ = workload_requests(poisson.workload, 1)
    path = tmp_path / "trace.csv"
    lines = ["arrival_s,prompt_len,output_len"] + [f"{r.arrival_s!r},200,20" for r in reqs]
    path.write_text("\n".join(lines) + "\n")
    replay = _scenario({"trace": str(path), "duration_s": 5.0})
    a, b = simulate(poisson), simulate(replay)
    for key in ("ttft_s_p50", "ttft_s_p99", "tpot_s_p50", "tpot_s_p99", "output_tokens_per_s"):
        assert getattr(a, key) == getattr(b, key), key
    assert a.requests == b.requests == len(reqs)


def test_azure_layout_and_jsonl(tmp_path):
    """Azure's TIMESTAMP/ContextTokens/GeneratedTokens: arrivals from the first row's time;
    a JSONL of moesim's columns reads the same."""
    azure = tmp_path / "azure.csv"
    azure.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:04.0319600,300,8\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
        "2023-11-16 18:17:05.5,110,27\n"
    )
    tr = read_request_trace(str(azure))
    assert tr.arrival_s == pytest.approx([0.0, 0.052, 1.52004])
    assert list(tr.prompt_tokens) == [4808, 300, 110]
    assert list(tr.output_tokens) == [10, 8, 27]
    jl = tmp_path / "t.jsonl"
    jl.write_text(
        "\n".join(
            json.dumps({"arrival_s": float(a), "prompt_len": int(p), "output_len": int(o)})
            for a, p, o in zip(tr.arrival_s, tr.prompt_tokens, tr.output_tokens, strict=True)
        )
    )
    tj = read_request_trace(str(jl))
    assert np.array_equal(tj.prompt_tokens, tr.prompt_tokens)


def test_a_trace_is_relative_to_the_scenario_file(tmp_path):
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "t.csv").write_text("arrival_s,prompt_len,output_len\n0,10,3\n1,12,4\n")
    s = _scenario({"trace": "traces/t.csv"}, base_dir=tmp_path)
    assert s.workload.trace == str(tmp_path / "traces" / "t.csv")
    assert s.workload.seq_len == 15  # mean 11 + 3.5, rounded up


def test_bad_traces_name_the_problem(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("time,in,out\n0,1,1\n")
    with pytest.raises(ValueError, match="arrival_s, prompt_len, output_len"):
        _scenario({"trace": str(bad)})
    with pytest.raises(ValueError, match="exactly one of"):
        _scenario({"trace": str(bad), "batch_size": 4})


def test_drawn_lengths_are_seeded_and_have_their_mean():
    wl = {
        "prompt_len": {"distribution": "uniform", "min": 100, "max": 300},
        "output_len": {"distribution": "lognormal", "mean": 50, "p99": 400},
        "arrival_rate_per_s": 200.0,
        "duration_s": 20.0,
    }
    s = _scenario(wl)
    reqs, _ = workload_requests(s.workload, 1)
    again, _ = workload_requests(s.workload, 1)
    assert [(r.prompt_tokens, r.output_tokens) for r in reqs] == [
        (r.prompt_tokens, r.output_tokens) for r in again
    ]
    assert np.mean([r.prompt_tokens for r in reqs]) == pytest.approx(200, rel=0.03)
    assert np.mean([r.output_tokens for r in reqs]) == pytest.approx(50, rel=0.1)
    assert len({r.output_tokens for r in reqs}) > 50


def test_a_heavier_output_tail_never_finishes_a_static_batch_sooner():
    """Same mean output, heavier tail: the static batch's last request finishes no earlier."""
    base = {"prompt_len": 128, "batch_size": 64}
    light = _scenario({**base, "output_len": {"distribution": "lognormal", "mean": 64, "p99": 128}})
    heavy = _scenario({**base, "output_len": {"distribution": "lognormal", "mean": 64, "p99": 512}})
    assert simulate(heavy).makespan_s >= simulate(light).makespan_s
