"""The GRPO/PPO rollout: responses of their own lengths, the replica that waits for the
longest, the tail, dynamic sampling's extra prompts."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.scenario_io import scenario_from_dict
from moesim.sim.rl_rollout import draw_lengths, replica_chunks
from moesim.sim.run import simulate

GRPO = {"stage": "grpo", "global_batch": 8, "group_size": 4, "prompt_len": 256, "response_len": 256}


def scenario(fidelity: str = "symmetric", **workload):
    return scenario_from_dict(
        {
            "name": "grpo",
            "model": "llama-3-8b",
            "cluster": {"gpu": "h100-sxm", "nodes": 1},
            "parallel": {"tp": 2, "pp": 1, "zero_stage": 1},
            "workload": {**GRPO, **workload},
            "simulation": {"fidelity": fidelity},
        }
    )


def empirical(*values: int) -> dict:
    return {"distribution": "empirical", "values": list(values)}


def test_a_group_shares_its_prompt_and_draws_are_seeded():
    s = scenario(prompt_len={"distribution": "uniform", "min": 10, "max": 900},
                 response_len={"distribution": "uniform", "min": 1, "max": 4000})  # fmt: skip
    prompts, responses = draw_lengths(s)
    assert len(prompts) == len(responses) == 8 * 4
    groups = prompts.reshape(8, 4)
    assert (groups == groups[:, :1]).all() and len(set(groups[:, 0])) > 1
    again = draw_lengths(s)
    assert (again[0] == prompts).all() and (again[1] == responses).all()
    other = draw_lengths(scenario(seed=1, response_len=s.workload.response_len))
    assert not (other[1] == responses).all()


def test_replica_chunks_are_contiguous_and_cover_the_batch():
    chunks = replica_chunks(10, 4)
    assert [(c.start, c.stop) for c in chunks] == [(0, 3), (3, 6), (6, 8), (8, 10)]


def test_fixed_lengths_have_no_tail_and_equal_a_fixed_distribution():
    r = simulate(scenario())
    assert r.rollout_tail_fraction == 0.0  # every response ends on the same decode step
    same = simulate(scenario(response_len={"distribution": "fixed", "mean": 256}))
    assert same.step_time_s == r.step_time_s
    assert same.rollout_response_tokens_max == 256


SHORT = (32, 48, 64, 96, 128, 160, 192, 224, 256, 256, 256, 256, 256, 256, 256)


def test_a_longer_tail_never_shortens_a_rollout():
    """Empirical lengths drawn with the same seed pick the same indices: raising the longest
    value lengthens some responses and shortens none."""
    for fidelity in ("symmetric", "full"):
        times, tails = [], []
        for longest in (256, 512, 1024, 2048, 4096):
            r = simulate(scenario(fidelity, response_len=empirical(*SHORT, longest)))
            times.append(r.rollout_time_s)
            tails.append(r.rollout_tail_fraction)
        assert times == sorted(times) and times[-1] > 2 * times[0], fidelity
        assert tails[-1] > tails[0]
        assert tails[-1] > 0.5  # most of the rollout waits for the longest responses


def test_symmetric_fidelity_runs_the_replica_with_the_longest_response():
    lengths = {"distribution": "lognormal", "mean": 300, "p99": 2000, "max": 4096}
    sym = simulate(scenario("symmetric", response_len=lengths))
    full = simulate(scenario("full", response_len=lengths))
    _, responses = draw_lengths(scenario(response_len=lengths))
    assert sym.rollout_response_tokens_max == full.rollout_response_tokens_max == responses.max()
    # full fidelity takes the slowest of all replicas, one of which symmetric ran
    assert sym.rollout_time_s <= full.rollout_time_s
    assert sym.rollout_time_s == pytest.approx(full.rollout_time_s, rel=0.05)


def test_training_costs_the_packed_mean_not_the_longest_response():
    fixed = simulate(scenario(response_len=256))
    spread = simulate(scenario(response_len=empirical(128, 384)))  # mean 256
    assert spread.time_breakdown_s["training"] == pytest.approx(fixed.time_breakdown_s["training"])
    assert spread.time_breakdown_s["reference"] == pytest.approx(
        fixed.time_breakdown_s["reference"]
    )
    assert spread.rollout_time_s > fixed.rollout_time_s  # the rollout waits for the 384s
    assert spread.tokens_per_s == pytest.approx(fixed.tokens_per_s * fixed.step_time_s
                                                / spread.step_time_s)  # fmt: skip


def test_dynamic_sampling_generates_and_scores_more_but_trains_the_kept_batch():
    base = simulate(scenario())
    over = simulate(scenario(oversample_ratio=2.0))
    tb0, tb2 = base.time_breakdown_s, over.time_breakdown_s
    assert over.generated_prompts == 16
    assert over.rollout_sequences_per_replica == 2 * base.rollout_sequences_per_replica
    assert tb2["rollout"] > tb0["rollout"]
    assert tb2["training"] == pytest.approx(tb0["training"])
    assert tb2["reference"] == pytest.approx(tb0["reference"])
    assert over.tokens_per_s < base.tokens_per_s  # same trained tokens, longer step
    # a reward model scores every generated group
    rm = {"reward": "model", "reward_model": "llama-3-8b"}
    r1, r2 = simulate(scenario(**rm)), simulate(scenario(**rm, oversample_ratio=2.0))
    assert r2.time_breakdown_s["reward"] > 1.5 * r1.time_breakdown_s["reward"]


def test_oversample_ratio_below_one_is_refused():
    with pytest.raises(ValueError, match="oversample_ratio"):
        scenario(oversample_ratio=0.5)


def test_rollout_draws_do_not_depend_on_the_replica_count():
    a = draw_lengths(scenario(response_len=empirical(5, 50, 500)))[1]
    s = scenario(response_len=empirical(5, 50, 500))
    assert isinstance(a, np.ndarray) and len(a) == 32
    assert (draw_lengths(s)[1] == a).all()


def test_a_pool_too_small_for_the_longest_allowed_sequence_is_reported():
    small = scenario_from_dict(
        {
            "name": "grpo",
            "model": "llama-2-13b",
            "cluster": {"gpu": "h100-sxm", "nodes": 1},
            "parallel": {"tp": 1, "pp": 1, "zero_stage": 1},
            "workload": {**GRPO, "response_len": {"distribution": "uniform", "min": 1,
                                                   "max": 60000}},
        }
    )  # fmt: skip
    from moesim.sim.post_training import longest_sequence_note  # memory only: no 60k decodes

    note = longest_sequence_note(small)
    assert note is not None and "60256" in note
    assert longest_sequence_note(scenario()) is None  # fixed lengths: the mean is the longest


# -- the rollout engine (workload.rollout_engine) ------------------------------------------------
def _replica_time_by_hand(s) -> float:
    """One replica, all n sequences at t=0, prompts p fitting one token budget, every response
    r tokens, a pool that holds them all: one prefill step of the n prompts (it samples each
    first token), then r − 1 decode rounds of all n, the j-th attending n·(p + j) keys."""
    from moesim.sim.engine_step import build_engine_step
    from moesim.sim.rl_rollout import rollout_scenario
    from moesim.sim.serving_step import ReplicaCost

    roll, *_ = rollout_scenario(s)
    cost = ReplicaCost(roll, None)
    step = build_engine_step(roll, cost, lambda x: ReplicaCost(x, None))
    n = s.workload.global_batch * s.workload.group_size // roll.parallel.dp_size
    p, r = s.workload.prompt_len, s.workload.response_len
    t = step.prefill_s([(0, p)] * n, n)
    return t + sum(step.decode_s(n, n * (p + j)) for j in range(1, r))


def test_both_engines_equal_the_hand_computed_rollout_when_kv_is_ample():
    """8 sequences of 256 + 256 tokens per replica: 2,048 prompt tokens fit one 8,192-token
    step and the pool holds everything, so vLLM V1 and prefill_first take the same steps."""
    v1 = simulate(scenario())
    first = simulate(scenario(rollout_engine={"scheduler": "prefill_first"}))
    assert v1.rollout_scheduler == "vllm_v1" and first.rollout_scheduler == "prefill_first"
    assert v1.rollout_preemptions == first.rollout_preemptions == 0
    by_hand = _replica_time_by_hand(scenario())
    assert v1.rollout_time_s == pytest.approx(by_hand, rel=1e-12)
    assert first.rollout_time_s == pytest.approx(by_hand, rel=1e-12)
    assert v1.rollout_kv_pool_tokens >= v1.rollout_peak_kv_tokens == 8 * 512


def _disaggregated(gpu_memory_utilization=None, workload=None, **engine):
    if gpu_memory_utilization is not None:
        engine["gpu_memory_utilization"] = gpu_memory_utilization
    return scenario_from_dict(
        {
            "name": "grpo",
            "model": "llama-2-13b",  # MHA: 0.8 MB of KV per token, the pool binds
            "cluster": {"gpu": "h100-sxm", "nodes": 1},
            "parallel": {"tp": 2, "pp": 1, "zero_stage": 1},
            "workload": {**GRPO, "global_batch": 16, "group_size": 16, "prompt_len": 512,
                         "response_len": 1024, "rollout": "disaggregated", "rollout_gpus": 8,
                         "rollout_engine": engine, **(workload or {})},
        }
    )  # fmt: skip


def test_less_rollout_memory_never_reduces_preemptions():
    runs = [simulate(_disaggregated(u)) for u in (None, 0.6, 0.5, 0.4, 0.35)]
    pools = [r.rollout_kv_pool_tokens for r in runs]
    preempted = [r.rollout_preemptions for r in runs]
    times = [r.rollout_time_s for r in runs]
    assert pools == sorted(pools, reverse=True)
    assert preempted == sorted(preempted) and preempted[0] == 0 and preempted[-1] > 0
    assert times == sorted(times)  # recomputing preempted sequences costs time
    for r in runs:  # the engine never holds more than its pool
        assert r.rollout_peak_kv_tokens <= r.rollout_kv_pool_tokens
        assert r.fits_in_memory


def test_rollout_gpu_memory_utilization_sizes_the_pool_as_vllm_does():
    """vLLM's pool is gpu_memory_utilization × HBM minus its weights (and the reserve)."""
    from moesim.analytic.memory import reserve_bytes
    from moesim.analytic.rollout_memory import inference_weight_bytes, rollout_kv_per_token

    s = _disaggregated(0.5)
    left = 0.5 * s.cluster.gpu.hbm_GB * 1e9 - inference_weight_bytes(s) - reserve_bytes(s)
    assert simulate(s).rollout_kv_pool_tokens == int(left // rollout_kv_per_token(s))


def _pipelined_and_whole(s):
    """The timed replica's engine run with the rollout's pp 2 rounds (EngineStep) and with
    every step one traversal of the whole batch (pp 1 over the same replica cost)."""
    from moesim.sim.engine_step import EngineStep, build_engine_step
    from moesim.sim.rl_rollout import rollout_engine_config, rollout_scenario, run_engine
    from moesim.sim.serving_step import ReplicaCost

    r = simulate(s)
    roll, slots, _, pool = rollout_scenario(s)
    cost = ReplicaCost(roll, None)
    prompts, responses = draw_lengths(s)
    n = r.rollout_sequences_per_replica
    engine = rollout_engine_config(roll, slots, pool, int((prompts + responses).max()))
    piped = run_engine(build_engine_step(roll, cost, None), prompts[:n], responses[:n], engine)
    whole = run_engine(EngineStep(cost, pp=1), prompts[:n], responses[:n], engine)
    return r, roll, engine, piped, whole


def test_a_pipelined_rollout_runs_serving_rounds_of_pp_batches():
    """Rollout pp 2: a step is a round of two micro-batches in flight, each with the rollout's
    max_num_batched_tokens (vLLM V1's batch queue, as serving). All sequences are there at
    t=0, so the engine takes the same steps either way; a round gives at most pp× the whole
    batch's traversal (each stage runs every micro-batch of the round). Decode here is bound
    by weight reads, which each micro-batch repeats on every stage (the last stage's LM head
    too), so its rounds gain nothing: they may even be a little longer than one traversal."""
    s = scenario(rollout_parallel={"pp": 2, "tp": 2})
    r, roll, engine, piped, whole = _pipelined_and_whole(s)
    assert r.rollout_parallel["pp"] == 2 and r.rollout_decode_microbatches == 2
    assert engine.max_num_batched_tokens == 2 * roll.workload.max_prefill_tokens
    # each sequence rides one of the two batches (its cohort), as serving's vllm_v1 engine
    assert engine.max_concurrent_batches == 2
    cohorts = [rq.cohort for rq in piped.requests]
    assert set(cohorts) <= {0, 1} and cohorts == sorted(cohorts)  # admitted in order, t = 0
    assert [k for k, *_ in piped.steps] == [k for k, *_ in whole.steps]
    assert piped.makespan_s == pytest.approx(r.rollout_time_s)
    for a, b in zip(piped.steps, whole.steps, strict=True):  # round by round
        assert (b[2] - b[1]) / 2 * (1 - 1e-12) <= a[2] - a[1] <= 2 * (b[2] - b[1])


def test_a_prefill_heavy_pipelined_rollout_is_faster_than_traversing_the_batch():
    """Long prompts, short responses: the rounds' prompt chunks fill both micro-batches and
    the two stages work at once, so the rollout is shorter than with one traversal a step."""
    s = scenario(rollout_parallel={"pp": 2, "tp": 2}, prompt_len=4096, response_len=4)
    _, _, _, piped, whole = _pipelined_and_whole(s)
    assert [k for k, *_ in piped.steps] == [k for k, *_ in whole.steps]
    assert piped.makespan_s < 0.8 * whole.makespan_s


def test_a_drawn_sequence_longer_than_the_pool_is_run_and_reported_as_not_fitting():
    """vLLM V1 could never finish a sequence its pool cannot hold: the rollout runs as if it
    fitted (as serving does) and the step says it does not fit."""
    # a pool of ~34,000 tokens per replica, one response of 40,000
    r = simulate(_disaggregated(0.35, {"response_len": empirical(*SHORT, 40000)}))
    assert r.rollout_response_tokens_max == 40000
    assert r.rollout_kv_pool_tokens < 40000 + 512
    assert r.fits_in_memory is False and r.fits_in_memory_parts["rollout_kv_pool"] is False
    assert "does not fit" in r.memory_note and r.rollout_kv_capacity_sequences >= 1
    assert simulate(_disaggregated(0.35)).fits_in_memory  # the same pool, shorter responses
