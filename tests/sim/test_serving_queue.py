"""The serving engine's queue: waits against queueing theory (M/D/1 with one slot, bulk service
with many, linear growth above capacity), and the per-step token budget (chunked prefill) that
sets how many waiting prompts one step takes."""

from __future__ import annotations

import numpy as np
import pytest
from serving_scale_scenarios import as_dict, serving

from moesim.scenario_io import scenario_from_dict
from moesim.sim.profile import DEFAULT_PROFILE_PATH
from moesim.sim.run import simulate
from moesim.sim.serving_requests import fixed_requests, poisson_arrivals_s
from moesim.sim.serving_scheduler import EngineConfig, serve
from moesim.sim.serving_step import ReplicaCost


def test_queue_matches_md1_mean_wait_at_batch_one():
    """Poisson arrivals, one slot, deterministic service S: mean wait ρ·S / (2(1 − ρ))."""
    s = serving("tiny-dense", gpus_per_node=1, prompt_len=64, output_len=3, arrival_rate_per_s=1.0)
    c = ReplicaCost(s)
    service = c.prefill(1, 64).total_s + c.decode(1, 65).total_s + c.decode(1, 66).total_s
    for rho in (0.3, 0.7):
        rate = rho / service
        waits = []
        for seed in range(3):
            arrivals = poisson_arrivals_s(rate, 8000 * service, seed)
            log = serve(c, fixed_requests(arrivals, 64, 3), EngineConfig(max_num_seqs=1))
            ttft = np.array([r.first_token_s - r.arrival_s for r in log.requests])
            waits.append(ttft.mean() - c.prefill(1, 64).total_s)
            # deterministic service: every request's decode takes the same time
            tpot = [(r.finish_s - r.first_token_s) / 2 for r in log.requests]
            assert np.ptp(tpot) == pytest.approx(0.0, abs=1e-12)
        md1 = rho * service / (2 * (1 - rho))
        assert np.mean(waits) == pytest.approx(md1, rel=0.1)  # M/M/1 would be 2×


def test_batched_queue_waits_only_the_step_in_progress_at_low_load():
    """Poisson arrivals, many slots, output_len 1 (a request is one prefill step of near-constant
    time S): every request waiting when a step ends joins the next one (bulk service), so a
    request waits only the rest of the step in progress. A busy period is a run of steps, each
    followed by another when something arrived during it (probability 1 - e^-x, x = λS): it
    lasts S·e^x on average; idle periods last 1/λ. So P(busy) = x·e^x / (1 + x·e^x) and the mean
    wait is P(busy)·S/2 (Poisson arrivals see time averages; they fall uniformly in a step)."""
    s = serving("tiny-dense", gpus_per_node=1, prompt_len=64, output_len=1, arrival_rate_per_s=1.0)
    # the premise (near-constant service for small batches) is the default profile's: with the
    # published H100 profile a 3-request prefill of this toy model takes 1.12x one request's
    s = s.model_copy(
        update={
            "simulation": s.simulation.model_copy(update={"profile": str(DEFAULT_PROFILE_PATH)})
        }
    )
    c = ReplicaCost(s)
    step = c.prefill(1, 64).total_s
    assert c.prefill(3, 64).total_s < 1.06 * step  # near-constant service for small batches
    for x in (0.3, 0.6):
        waits = []
        for seed in range(3):
            arrivals = poisson_arrivals_s(x / step, 20000 * step, seed)
            log = serve(c, fixed_requests(arrivals, 64, 1), EngineConfig(max_num_seqs=64))
            waits.append(np.mean([r.first_token_s - r.arrival_s for r in log.requests]) - step)
        busy = x * np.exp(x) / (1 + x * np.exp(x))
        assert np.mean(waits) == pytest.approx(busy * step / 2, rel=0.1)
        assert np.mean(waits) < 0.8 * x * step / (2 * (1 - x))  # below M/D/1's one at a time


def test_batched_queue_above_capacity_grows_linearly():
    """Arrivals at 3× what c slots can serve: every step is a full batch of c, so the server
    completes μ = c / S(c) requests per second, and the k-th arrival (at ≈ k/λ) gets its token
    at ≈ k/μ: TTFT grows as k·(1/μ − 1/λ)."""
    s = serving("tiny-dense", gpus_per_node=1, prompt_len=64, output_len=1, arrival_rate_per_s=1.0)
    c = ReplicaCost(s)
    slots = 4
    step = c.prefill(slots, 64).total_s
    mu = slots / step
    lam = 3 * mu
    arrivals = poisson_arrivals_s(lam, 4000 * step, 0)
    log = serve(c, fixed_requests(arrivals, 64, 1), EngineConfig(max_num_seqs=slots))
    n = len(log.requests)
    # once the queue has built up (a few steps), every step but the last is a full batch
    assert all(b == slots for kind, _, _, b in log.steps[10:-1] if kind == "prefill")
    makespan = max(r.finish_s for r in log.requests)
    assert n / makespan == pytest.approx(mu, rel=0.01)
    tail = log.requests[-n // 10 :]
    for r in tail[::50]:
        k = log.requests.index(r) + 1
        assert r.first_token_s - r.arrival_s == pytest.approx(k * (1 / mu - 1 / lam), rel=0.05)


def test_long_prompts_are_chunked_over_prefill_steps():
    """A 2048-token prompt under a 512-token budget takes four prefill steps; chunk i attends the
    512·i keys before it and its own causally, and only the last one emits the first token."""
    s = serving("llama-3-8b", gpus_per_node=1, prompt_len=2048, output_len=2, batch_size=1)
    c = ReplicaCost(s)
    log = serve(c, fixed_requests([0.0], 2048, 2), EngineConfig(1, max_num_batched_tokens=512))
    kinds = [k for k, _, _, _ in log.steps]
    assert kinds == ["prefill"] * 4 + ["decode"]
    chunks = [c.prefill_chunks([(512 * i, 512)], int(i == 3)).total_s for i in range(4)]
    assert log.requests[0].first_token_s == pytest.approx(sum(chunks))
    # the chunks' attended keys add up to the whole prompt's, L(L+1)/2
    seen: list[float] = []
    step = c.step
    c.step = lambda tokens, keys, *a, **k: seen.append(keys) or step(tokens, keys, *a, **k)
    for i in range(4):
        c.prefill_chunks([(512 * i, 512)], int(i == 3))
    c.prefill_chunks([(0, 2048)], 1)
    del c.step  # the class method again
    assert sum(seen[:4]) == pytest.approx(seen[4]) == pytest.approx(2048 * 2049 / 2)
    # four steps re-read the weights: slower than one whole-prompt step, by less than 4×
    whole = c.prefill(1, 2048).total_s
    assert whole < sum(chunks) < 4 * whole
    r = simulate(
        scenario_from_dict(
            {**as_dict(s), "workload": {**as_dict(s)["workload"], "max_prefill_tokens": 512}}
        )
    )
    assert r.prefill_steps == 4 and r.ttft_s_p50 == pytest.approx(sum(chunks))


def test_a_small_prefill_budget_raises_ttft_at_high_load():
    """At 80 req/s of 512-token prompts on one H100 an 8192-token budget prefills up to 16
    waiting prompts per step (one weight read); a 512-token budget takes them one per step, so
    prefill steps multiply, the queue drains slower and TTFT rises (at light load, where
    prompts rarely wait together, the budget makes little difference)."""
    base = serving(
        "llama-3-8b", gpus_per_node=1, arrival_rate_per_s=80.0, duration_s=30.0, output_len=32
    )
    # the load regime (80 req/s near what one H100 drains) is the default profile's; the
    # published H100 profile prefills faster, leaving the 512-token budget 1.7x, not 3x, slower
    default = {"profile": str(DEFAULT_PROFILE_PATH)}

    def run(budget: int):
        wl = {**as_dict(base)["workload"], "max_prefill_tokens": budget}
        return simulate(
            scenario_from_dict({**as_dict(base), "workload": wl, "simulation": default})
        )

    big, small = run(8192), run(512)
    assert big.max_prefill_tokens == 8192 and small.max_prefill_tokens == 512
    assert small.prefill_steps > 2 * big.prefill_steps
    assert small.ttft_s_mean > 3 * big.ttft_s_mean
    assert small.ttft_s_p99 > 2 * big.ttft_s_p99
    assert small.output_tokens_per_s < big.output_tokens_per_s
