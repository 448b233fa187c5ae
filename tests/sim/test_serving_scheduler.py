"""The engine loop: every request decodes its own number of tokens, and the steps it shares
with others hold exactly the sequences still running."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.scenario_io import scenario_from_dict
from moesim.sim.serving_requests import Request, fixed_requests, poisson_arrivals_s
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


# -- vllm_v1 ---------------------------------------------------------------------------------
def _v1(max_num_seqs: int = 64, budget: int = 8192, pool: float = math.inf) -> EngineConfig:
    return EngineConfig(max_num_seqs, budget, "vllm_v1", pool)


def _mixed_load(n_rate: float = 3000.0, seed: int = 1) -> list[Request]:
    rng = np.random.default_rng(0)
    arrivals = poisson_arrivals_s(n_rate, 0.5, seed)
    prompts = rng.integers(50, 400, len(arrivals))
    outputs = rng.integers(10, 300, len(arrivals))
    return [Request(a, int(p), int(o)) for a, p, o in zip(arrivals, prompts, outputs, strict=True)]


def test_decodes_ride_along_in_the_step_that_prefills_a_new_prompt():
    """A request decoding when a second arrives: the next step holds its decode and the new
    prompt (vLLM V1's mixed batch); under prefill_first the decode waits a prefill step."""
    c = _cost()
    reqs = [Request(0.0, 64, 20), Request(1e-9, 64, 2)]
    log = serve(c, reqs, _v1())
    kinds = [k for k, _, _, _ in log.steps]
    assert kinds[0] == "prefill" and kinds[1] == "mixed"
    assert reqs[1].first_token_s == log.steps[1][2]
    # the mixed step costs one forward over both, not a decode step plus a prefill step
    both = c.mixed_step(1, 65.0, [(0, 64)], 1).total_s
    assert both == pytest.approx(log.steps[1][2] - log.steps[1][1])
    assert both < c.decode(1, 65.0).total_s + c.prefill(1, 64).total_s


def test_the_budget_is_shared_decodes_first():
    """Three decoding requests and a 100-token prompt under a 50-token budget: each step gives
    the three decodes their token first and the prompt the 47 tokens left."""
    c = _cost()
    reqs = [Request(0.0, 10, 30) for _ in range(3)] + [Request(0.0, 100, 2)]
    log = serve(c, reqs, _v1(budget=50))
    # step 1: the three prompts (30 tokens) and 20 of the long one
    assert log.steps[0][0] == "prefill" and log.steps[0][3] == 4
    # then mixed steps of 3 decodes + the rest of the prompt in 47-token chunks: 80 = 47 + 33
    assert [k for k, _, _, _ in log.steps[1:3]] == ["mixed", "mixed"]
    assert reqs[3].first_token_s == log.steps[2][2]
    assert log.prefill_tokens == 3 * 10 + 100


def test_preemption_recomputes_the_newest_request():
    """A pool of 4 blocks of 16 tokens, two 16-token prompts that decode 40 tokens each: both
    are admitted (one block each); as they grow the pool runs out and the newer one is
    preempted (its blocks freed), then recomputed (prompt + the tokens it had) once the older
    one finishes."""
    c = _cost()
    reqs = [Request(0.0, 16, 40), Request(0.0, 16, 40)]
    log = serve(c, reqs, _v1(pool=4 * 16))
    assert log.preemptions >= 1 and reqs[1].preemptions >= 1 and reqs[0].preemptions == 0
    assert reqs[0].finish_s < reqs[1].finish_s
    assert log.prefill_tokens > 2 * 16  # the recomputation
    assert log.peak_kv_blocks <= 4


def test_a_pool_that_holds_the_peak_changes_nothing():
    """With a pool at least what an unbounded run held at its peak, the run is the same and
    nothing is preempted; a smaller pool never finishes the requests sooner (more KV memory
    never slows the engine). The count of preemptions is NOT monotone in the pool: a bigger
    pool admits more requests, which then outgrow it together (this load: 2000 tokens → 893
    preemptions, 4000 → 904), so only its vanishing above the peak is a property."""
    c = _cost()
    free = serve(c, _mixed_load(), _v1(budget=1024))
    peak = free.peak_kv_blocks * 16
    same = serve(c, _mixed_load(), _v1(budget=1024, pool=peak))
    assert same.preemptions == 0 and same.makespan_s == free.makespan_s
    spans = [serve(c, _mixed_load(), _v1(budget=1024, pool=p)).makespan_s for p in (2000, 8000)]
    assert spans[0] >= spans[1] >= free.makespan_s
    small = serve(c, _mixed_load(), _v1(budget=1024, pool=2000))
    assert small.preemptions > 0 and small.peak_kv_blocks * 16 <= 2000


def test_a_request_longer_than_the_pool_is_refused():
    with pytest.raises(ValueError, match="can never finish"):
        serve(_cost(), [Request(0.0, 100, 100)], _v1(pool=64))


@pytest.mark.parametrize("prompt,output", [(512, 64), (128, 512)])
def test_mixed_batching_against_prefill_first_at_equal_load(prompt, output):
    """Same Poisson arrivals on Llama-3-8B / H100, both schedulers, an unbounded pool.

    Measured (moesim): below saturation vLLM V1's mixed steps lower the mean TPOT (decodes
    never wait out a prefill step) and raise the mean TTFT a little: a new prompt's step also
    carries the running decodes (their KV reads, and the budget they take). The rise stays under
    one prefill_first TPOT (e.g. 512/64 at 60 req/s: 29.7 vs 25.4 ms, TPOT 21 ms). Above
    saturation V1 drains the queue faster (no step without decodes), so its TTFT is lower
    (128/512 at 60 req/s: 2.8 vs 4.1 s) and it finishes sooner."""
    c = ReplicaCost(
        scenario_from_dict(
            {
                "name": "serving",
                "model": "llama-3-8b",
                "cluster": {"gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 1},
                "parallel": {"zero_stage": 0, "recompute": "none"},
                "workload": {"stage": "inference", "batch_size": 1},
            }
        )
    )

    def run(policy: str, rate: float):
        arrivals = poisson_arrivals_s(rate, 10.0, 0)
        log = serve(c, fixed_requests(arrivals, prompt, output), EngineConfig(256, 8192, policy))
        reqs = log.requests
        return np.mean([r.ttft_s for r in reqs]), np.mean([r.tpot_s for r in reqs]), log

    for rate in (10.0, 30.0):  # below saturation
        (t_pf, p_pf, pf), (t_v1, p_v1, v1) = run("prefill_first", rate), run("vllm_v1", rate)
        assert p_v1 <= p_pf
        assert t_pf <= t_v1 < t_pf + p_pf
    if output == 512:  # saturated: V1's TTFT is lower
        (t_pf, _, pf), (t_v1, _, v1) = run("prefill_first", 60.0), run("vllm_v1", 60.0)
        assert t_v1 < t_pf and v1.makespan_s < pf.makespan_s
