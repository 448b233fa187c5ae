"""The engine loop: every request decodes its own number of tokens, and the steps it shares
with others hold exactly the sequences still running."""

from __future__ import annotations

import pytest

from moesim.scenario_io import scenario_from_dict
from moesim.sim.serving_requests import Request, fixed_requests
from moesim.sim.serving_scheduler import EngineConfig, serve
from moesim.sim.serving_step import ReplicaCost


def _cost(model: str = "tiny-dense") -> ReplicaCost:
    s = scenario_from_dict(
        {
            "name": "serving",
            "model": model,
            "cluster": {"gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 1},
            "parallel": {"zero_stage": 0, "recompute": "none"},
            "workload": {"stage": "inference", "prompt_len": 64, "output_len": 8, "batch_size": 1},
        }
    )
    return ReplicaCost(s)


def test_each_request_decodes_its_own_output_length():
    """Three requests at t=0 with 3, 6 and 10 output tokens: the first decode steps hold all
    three, then two, then one; each request gets output_tokens − 1 decode steps."""
    c = _cost()
    reqs = [Request(0.0, 64, 3), Request(0.0, 32, 6), Request(0.0, 100, 10)]
    log = serve(c, reqs, EngineConfig(max_num_seqs=8))
    batches = [b for kind, _, _, b in log.steps if kind == "decode"]
    assert batches == [3] * 2 + [2] * 3 + [1] * 4
    assert [r.finish_s for r in reqs] == sorted(r.finish_s for r in reqs)
    # the decode context sums: prompts + 1 at the first step, +batch per step
    assert log.decode_context_sum == pytest.approx(
        sum(sum(r.prompt_tokens + 1 + j for j in range(r.output_tokens - 1)) for r in reqs)
    )


def test_equal_lengths_match_fixed_requests():
    """Requests built one by one with the same lengths run exactly as fixed_requests."""
    c = _cost()
    arrivals = [0.0, 0.001, 0.002, 0.01]
    a = serve(c, fixed_requests(arrivals, 64, 5), EngineConfig(2))
    b = serve(c, [Request(t, 64, 5) for t in arrivals], EngineConfig(2))
    assert [r.finish_s for r in a.requests] == [r.finish_s for r in b.requests]
    assert a.steps == b.steps


def test_a_long_prompt_does_not_hold_back_the_short_ones_behind_it_past_its_chunks():
    """Prompts of 600 and 40 tokens under a 512-token budget: the first step takes 512 of the
    long one, the second its last 88 and the whole short one; both get their first token then."""
    c = _cost()
    reqs = [Request(0.0, 600, 2), Request(0.0, 40, 2)]
    log = serve(c, reqs, EngineConfig(4, max_num_batched_tokens=512))
    kinds = [(k, b) for k, _, _, b in log.steps]
    assert kinds[:2] == [("prefill", 1), ("prefill", 2)]
    assert reqs[0].first_token_s == reqs[1].first_token_s == log.steps[1][2]


def test_engine_config_rejects_zero_limits():
    with pytest.raises(ValueError, match="max_num_seqs"):
        EngineConfig(0)
