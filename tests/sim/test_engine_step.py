"""The engine's step: pp > 1 steps pipelined over micro-batches in flight (a round between the
longest micro-batch's traversal and the micro-batches one after another; prefill throughput up
to pp×; a lone prompt pays its whole traversal), and the scheduler's view of it."""

from __future__ import annotations

import math

import pytest
from serving_scale_scenarios import serving

from moesim.sim.engine_step import EngineStep, SchedulerView, build_engine_step
from moesim.sim.serving_step import ReplicaCost


def _engine(pp: int, **wl) -> EngineStep:
    s = serving("llama-3-70b", parallel={"tp": 2, "pp": pp}, **wl)
    return build_engine_step(s, ReplicaCost(s), ReplicaCost)


def _stage_busy(cost, pp: int, *args) -> list[float]:
    """Each stage's work on one micro-batch (ReplicaCost's own per-stage route)."""
    out = []
    for s in range(pp):
        st = cost.mixed_step(*args, stage=s)
        out.append(st.total_s - st.pp_comm_s)
    return out


@pytest.mark.parametrize("pp", [2, 4])
@pytest.mark.parametrize("batch", [1, 3, 8, 64, 256])
def test_a_decode_round_lies_between_its_longest_micro_batch_and_all_in_turn(pp, batch):
    e = _engine(pp)
    ctx = batch * 700.0
    sizes = [batch // pp + (i < batch % pp) for i in range(pp)]
    alone = [e.cost.decode(n, ctx * n / batch).total_s for n in sizes if n]
    pipelined_s = e.decode_s(batch, ctx)
    assert max(alone) * (1 - 1e-12) <= pipelined_s <= sum(alone) * (1 + 1e-12)
    sequential_s = e.cost.decode(batch, ctx).total_s  # every stage in turn, one batch
    assert batch / pipelined_s <= pp * batch / sequential_s * (1 + 1e-9)  # at most pp×


def test_a_round_is_the_longest_traversal_or_the_busiest_stage():
    e = _engine(4)
    mb = math.ceil(10 / 4)
    assert e.decode_microbatch(10) == mb
    sizes = [3, 3, 2, 2]
    traversal = e.cost.decode(3, 7000.0 * 3 / 10).total_s
    busy = [_stage_busy(e.cost, 4, n, 7000.0 * n / 10, [], 0) for n in sizes]
    busiest = max(sum(b[s] for b in busy) for s in range(4))
    assert e.decode_s(10, 7000.0) == pytest.approx(max(traversal, busiest), rel=1e-12)
    # batch 1: one micro-batch, the stages take turns: the sequential step
    assert e.decode_s(1, 700.0) == pytest.approx(e.cost.decode(1, 700.0).total_s)


@pytest.mark.parametrize("model", ["llama-3-70b", "qwen3-30b-a3b"])
@pytest.mark.parametrize("pp", [2, 4])
def test_the_stages_of_a_step_sum_to_its_traversal(model, pp):
    s = serving(model, parallel={"tp": 2, "pp": pp})
    cost = ReplicaCost(s)
    for args in ((16, 16 * 900.0, [], 0), (0, 0.0, [(0, 2048), (512, 300)], 1)):
        whole = cost.mixed_step(*args)
        parts = [cost.mixed_step(*args, stage=k) for k in range(pp)]
        assert sum(x.total_s for x in parts) == pytest.approx(whole.total_s, rel=1e-12)
        assert sum(x.pp_comm_s for x in parts) == pytest.approx(whole.pp_comm_s, rel=1e-12)
        assert parts[-1].lm_head_s == whole.lm_head_s and parts[0].lm_head_s == 0.0
    mixed = (8, 8 * 900.0, [(0, 1000)], 1)
    whole = cost.mixed_step(*mixed).total_s
    assert sum(cost.mixed_step(*mixed, stage=k).total_s for k in range(pp)) == pytest.approx(whole)


@pytest.mark.parametrize("pp", [2, 4])
@pytest.mark.parametrize("chunk", [512, 8192])
def test_pipelined_prefill_throughput_is_at_least_the_unpipelined_one(pp, chunk):
    e = _engine(pp, max_prefill_tokens=chunk)
    alone_s = e.cost.prefill_chunks([(0, chunk)], 1).total_s  # one batch through every stage
    round_s = e.prefill_s([(0, chunk)] * pp, pp)  # pp batches in flight
    assert pp * chunk / round_s >= chunk / alone_s * (1 - 1e-12)
    assert round_s >= alone_s * (1 - 1e-12)  # no batch comes back before its traversal
    if chunk == 8192:  # compute-bound: close to pp× (the stages split the work)
        assert pp * chunk / round_s > 0.9 * pp * chunk / alone_s


def test_a_long_prompt_rides_consecutive_micro_batches():
    e = _engine(2, max_prefill_tokens=1024)
    one = e.prefill_s([(0, 2048)], 1)  # cut at the batch budget: (0, 1024) and (1024, 1024)
    first = e.cost.prefill_chunks([(0, 1024)], 0).total_s
    second = e.cost.prefill_chunks([(1024, 1024)], 1).total_s
    assert one == pytest.approx(max(first, second), rel=1e-12)
    assert one < e.cost.prefill_chunks([(0, 2048)], 1).total_s


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


def test_a_lone_request_pays_the_whole_traversal_of_its_prompt():
    from moesim.sim.run import simulate

    s = serving("llama-3-8b", parallel={"tp": 2, "pp": 2}, prompt_len=2048, output_len=8)
    r = simulate(s)
    unpipelined = ReplicaCost(s).prefill_chunks([(0, 2048)], 1).total_s
    assert r.ttft_s_p50 == pytest.approx(unpipelined, rel=1e-12)


def test_a_pipelined_replica_prefills_faster_than_one_of_its_stages_alone():
    # prefill-heavy (one output token): pp 2 on 2 × 2 GPUs against pp 1 on 2 GPUs; before
    # prefill was pipelined the two stages took turns and pp 2 came out slower (the sends)
    from moesim.sim.run import simulate

    def run(pp: int):
        s = serving(
            "llama-3-8b",
            cluster={"gpus_per_node": 2 * pp},
            parallel={"tp": 2, "pp": pp},
            batch_size=32,
            prompt_len=4096,
            output_len=1,
        )
        return simulate(s)

    one, two = run(1), run(2)
    assert two.output_tokens_per_s > 1.5 * one.output_tokens_per_s
    assert two.prefill_tokens_computed == one.prefill_tokens_computed


@pytest.mark.parametrize("pp", [1, 2])
def test_a_speculative_round_of_full_verifies_is_a_decode_round(pp):
    spec = {"method": "draft", "draft_model": "llama-3-8b", "num_speculative_tokens": 2,
            "acceptance_rate": 0.7}  # fmt: skip
    e = _engine(pp, speculative=spec)
    verifies = [(500 + 10 * i, 3) for i in range(6)]
    ctx = float(sum(o + 1 for o, _ in verifies))
    assert e.mixed_s(0, 0.0, [], 0, verifies) == e.decode_s(6, ctx)
    # a verify cut short (q < k + 1) makes it a step of its own kind: no faster than the
    # round of plain decodes, and drafts and verifies ride in the same round as prompt chunks
    cut = [*verifies[:-1], (550, 2)]
    assert e.mixed_s(0, 0.0, [], 0, cut) >= e.mixed_s(6, ctx, [], 0) * (1 - 1e-12)
    with_chunk = e.mixed_s(0, 0.0, [(0, 512)], 1, verifies)
    assert with_chunk > e.mixed_s(0, 0.0, [], 0, cut)
