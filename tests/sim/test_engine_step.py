"""The engine's step: pp > 1 decode pipelined over micro-batches (throughput at least the
sequential one's, TPOT one traversal of a micro-batch), and the scheduler's view of it."""

from __future__ import annotations

import math

import pytest
from serving_scale_scenarios import serving

from moesim.sim.engine_step import EngineStep, SchedulerView, build_engine_step
from moesim.sim.serving_step import ReplicaCost


def _engine(pp: int, **wl) -> EngineStep:
    s = serving("llama-3-70b", parallel={"tp": 2, "pp": pp}, **wl)
    return build_engine_step(s, ReplicaCost(s), ReplicaCost)


@pytest.mark.parametrize("pp", [2, 4])
@pytest.mark.parametrize("batch", [1, 3, 8, 64, 256])
def test_pipelined_decode_throughput_is_at_least_the_sequential_one(pp, batch):
    e = _engine(pp)
    ctx = batch * 700.0
    sequential_s = e.cost.decode(batch, ctx).total_s  # every stage in turn, one batch
    pipelined_s = e.decode_s(batch, ctx)
    assert batch / pipelined_s >= batch / sequential_s * (1 - 1e-12)
    assert batch / pipelined_s <= pp * batch / sequential_s * (1 + 1e-9)  # at most pp×


def test_a_round_is_one_traversal_of_a_micro_batch():
    e = _engine(4)
    mb = math.ceil(10 / 4)
    assert e.decode_microbatch(10) == mb
    assert e.decode_s(10, 7000.0) == pytest.approx(e.cost.decode(mb, 7000.0 * mb / 10).total_s)
    # batch 1: one micro-batch, the stages take turns: the sequential step
    assert e.decode_s(1, 700.0) == pytest.approx(e.cost.decode(1, 700.0).total_s)


def test_pp_one_is_the_plain_step():
    e = _engine(1)
    assert e.decode_s(32, 32 * 700.0) == e.cost.decode(32, 32 * 700.0).total_s
    chunks = [(0, 512), (0, 300)]
    assert e.prefill_s(chunks, 2) == e.cost.prefill_chunks(chunks, 2).total_s
    view = SchedulerView(e)
    assert view.decode(32, 32 * 700.0).total_s == e.decode_s(32, 32 * 700.0)
    assert view.prefill_chunks(chunks, 2).total_s == e.prefill_s(chunks, 2)


# -- end to end: the serving simulation with the engine's options -------------------------------
def _run(**wl):
    from moesim.sim.run import simulate

    base = {"batch_size": 16, "prompt_len": 256, "output_len": 33}
    return simulate(serving("mixtral-8x7b", parallel={"tp": 1, "ep": 8}, **{**base, **wl}))


def test_speculative_serving_takes_fewer_steps_and_acceptance_zero_only_costs():
    plain = _run()
    sp = {"method": "draft", "draft_model": "mistral-7b", "num_speculative_tokens": 3}
    plain = _run(scheduler="prefill_first")  # the engine speculative decoding runs under
    zero = _run(speculative={**sp, "acceptance_rate": 0.0}, scheduler="prefill_first")
    assert zero.tpot_s_p50 > plain.tpot_s_p50
    assert zero.output_tokens_per_s < plain.output_tokens_per_s
    assert zero.speculative["tokens_per_step"] == 1.0
    full = _run(speculative={**sp, "acceptance_rate": 1.0}, scheduler="prefill_first")
    # 32 tokens after the first in 8 verify steps of 4
    assert full.speculative["tokens_per_step"] == 4.0
    assert full.tpot_s_p50 == pytest.approx(
        8 * (full.speculative["verify_s"] + full.speculative["draft_s"]) / 32, rel=0.05
    )


def test_two_batch_overlap_never_slows_serving():
    plain, tbo = _run(), _run(two_batch_overlap=True)
    assert tbo.tpot_s_p50 <= plain.tpot_s_p50 + 1e-12
    assert tbo.ttft_s_p50 <= plain.ttft_s_p50 + 1e-12
    assert tbo.output_tokens_per_s >= plain.output_tokens_per_s * (1 - 1e-12)


def test_pp_serving_reports_its_micro_batches():
    from moesim.sim.run import simulate

    s = serving(
        "llama-3-70b",
        parallel={"tp": 2, "pp": 4},
        batch_size=32,
        output_len=17,
        scheduler="prefill_first",  # every decode step runs all 32
    )
    r = simulate(s)
    assert r.decode_microbatches == 4 and r.decode_microbatch_size == 8
    e = _engine(4)
    # a decode round is the traversal of an 8-sequence micro-batch, not of all 32
    ctx = 32 * (512 + 8.0)
    assert r.step_time_s < e.cost.decode(32, ctx).total_s
    assert r.step_time_s == pytest.approx(e.decode_s(32, ctx), rel=0.05)


def test_decode_dispatcher_switches_only_the_decode_steps():
    # SGLang's --deepep-mode auto: DeepEP normal kernels in prefill, low-latency in decode
    layout = {"tp": 1, "ep": 16, "moe_dispatcher": "deepep"}
    both = serving("qwen3-30b-a3b", nodes=2, parallel=layout)
    auto = serving(
        "qwen3-30b-a3b", nodes=2, parallel=layout, decode_moe_dispatcher="deepep_low_latency"
    )
    ll = serving(
        "qwen3-30b-a3b", nodes=2, parallel={**layout, "moe_dispatcher": "deepep_low_latency"}
    )
    e_both, e_auto, e_ll = (
        build_engine_step(x, ReplicaCost(x), ReplicaCost) for x in (both, auto, ll)
    )
    chunks = [(0, 4096)]
    assert e_auto.prefill_s(chunks, 1) == e_both.prefill_s(chunks, 1)
    assert e_auto.decode_s(64, 64 * 600.0) == pytest.approx(e_ll.decode_s(64, 64 * 600.0))
    assert e_auto.decode_s(64, 64 * 600.0) != e_both.decode_s(64, 64 * 600.0)
    assert e_auto.decode_cost.ctx.dispatcher == "deepep_low_latency"
    assert e_auto.decode_sm_slowdown == 1.0 and e_auto.sm_slowdown > 1.0  # LL takes no SMs


def test_vllm_v1_mixed_steps_go_through_the_engine():
    from moesim.sim.run import simulate

    e = _engine(1, two_batch_overlap=True)
    chunks = [(0, 512)]
    assert e.mixed_s(0, 0.0, chunks, 1) == e.prefill_s(chunks, 1)
    assert e.mixed_s(8, 8 * 700.0, [], 0) == e.decode_s(8, 8 * 700.0)
    mixed = e.cost.mixed_step(8, 8 * 700.0, chunks, 1).total_s
    assert e.mixed_s(8, 8 * 700.0, chunks, 1) <= mixed + 1e-15
    # the default engine (vllm_v1) serves with the overlap on, never slower
    kw = {"parallel": {"tp": 1, "ep": 8}, "arrival_rate_per_s": 8.0, "duration_s": 3.0}
    plain = simulate(serving("mixtral-8x7b", **kw))
    tbo = simulate(serving("mixtral-8x7b", two_batch_overlap=True, **kw))
    assert tbo.ttft_s_p50 <= plain.ttft_s_p50 + 1e-12
    assert tbo.tpot_s_p50 <= plain.tpot_s_p50 + 1e-12
