"""Speculative decoding under the vllm_v1 engine: drafts in the step budget, lookahead KV slots,
seeded acceptance draws, mixed steps, and the drafter's memory."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import pytest
from serving_scale_scenarios import serving

from moesim.analytic.memory import kv_cache_bytes_per_token
from moesim.scenario_io import scenario_from_dict
from moesim.sim.engine_step import build_engine_step
from moesim.sim.run import simulate
from moesim.sim.serving_memory import (
    drafter_kv_bytes_per_token,
    drafter_weights_bytes,
    inference_memory,
    kv_capacity_tokens,
    kv_pool_bytes,
)
from moesim.sim.serving_requests import fixed_requests
from moesim.sim.serving_scheduler import EngineConfig, serve
from moesim.sim.serving_step import ReplicaCost

DRAFT = {"method": "draft", "draft_model": "mistral-7b", "num_speculative_tokens": 3}


# -- the scheduler, on a cost that records what each step ran ----------------------------------
@dataclass(frozen=True)
class _Step:
    total_s: float


class _Recorder:
    """A step cost of one second that records each step's decodes, chunks and verifies."""

    def __init__(self):
        self.steps: list[tuple[int, list, list]] = []

    def mixed_step(self, decodes, context, chunks, finished, verifies=None):
        self.steps.append((decodes, list(chunks), list(verifies or [])))
        return _Step(1.0)

    def decode(self, batch, context):
        self.steps.append((batch, [], []))
        return _Step(1.0)


def _engine(k: int, a: float, budget: int = 64, block_size: int = 16, seed: int = 0):
    return EngineConfig(
        max_num_seqs=8,
        max_num_batched_tokens=budget,
        policy="vllm_v1",
        block_size=block_size,
        num_speculative_tokens=k,
        acceptance_rate=a,
        seed=seed,
    )


def test_each_decode_schedules_its_token_and_k_drafts():
    # two requests of 5 prompt and 10 output tokens, k = 2, every draft accepted: one prefill
    # step of 10 tokens, then verify steps of 1 + 2 tokens per sequence until 10 tokens each
    cost, reqs = _Recorder(), fixed_requests([0.0, 0.0], 5, 10)
    log = serve(cost, reqs, _engine(2, 1.0))
    assert cost.steps[0] == (0, [(0, 5), (0, 5)], [])
    assert [v for _, _, v in cost.steps[1:]] == [[(5, 3), (5, 3)], [(8, 3), (8, 3)], [(11, 3)] * 2]
    assert log.batched_tokens == 10 + 3 * 2 * 3
    assert log.draft_tokens == 12 and log.verify_steps == 6
    assert all(r.finish_s == 4.0 and r.first_token_s == 1.0 for r in reqs)


def test_drafts_are_cut_to_the_token_budget():
    # budget 10, k = 5: the first sequence takes 1 + 5, the second the 4 left (3 drafts)
    cost = _Recorder()
    serve(cost, fixed_requests([0.0, 0.0], 5, 4), _engine(5, 1.0, budget=10))
    assert cost.steps[1] == (0, [], [(5, 6), (5, 4)])
    assert all(sum(c for _, c in ch) + sum(q for _, q in v) + d <= 10 for d, ch, v in cost.steps)


def test_acceptance_zero_gives_one_token_per_verify():
    cost, reqs = _Recorder(), fixed_requests([0.0], 7, 6)
    log = serve(cost, reqs, _engine(3, 0.0))
    assert len(cost.steps) == 1 + 5  # the prefill, then 5 verify steps of one token each
    assert log.accepted_tokens == 0 and log.draft_tokens == 15
    assert reqs[0].tpot_s == 1.0


def test_drafts_and_lookahead_take_kv_slots():
    # block_size 1: a verify of computed c holds c + (1 + k) + k slots (vLLM's
    # allocate_slots(..., num_lookahead_tokens=k)); prompt 10, k = 2, 3 steps of 3 tokens:
    # the last verify starts at c = 10 + 2·3 and holds 16 + 3 + 2 = 21 slots
    spec = serve(_Recorder(), fixed_requests([0.0], 10, 10), _engine(2, 1.0, block_size=1))
    plain = serve(_Recorder(), fixed_requests([0.0], 10, 10), _engine(0, 0.0, block_size=1))
    assert spec.peak_kv_blocks == 21
    assert plain.peak_kv_blocks == 19  # prompt + output − 1 tokens computed


def test_acceptance_draws_are_seeded_per_request():
    def run(seed: int) -> list[float]:
        reqs = fixed_requests([0.0] * 6, 16, 40)
        serve(_Recorder(), reqs, _engine(3, 0.5, seed=seed))
        return [r.finish_s for r in reqs]

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert len(set(run(7))) > 1  # requests draw their own acceptances


def test_a_pool_too_small_for_the_drafts_is_refused():
    # prompt 8 + output 8 fit 16 slots, but a verify needs 2k more
    engine = EngineConfig(1, 64, "vllm_v1", kv_capacity_tokens=16, block_size=1)
    serve(_Recorder(), fixed_requests([0.0], 8, 8), engine)
    spec = EngineConfig(1, 64, "vllm_v1", 16, 1, num_speculative_tokens=2)
    with pytest.raises(ValueError, match="can never finish"):
        serve(_Recorder(), fixed_requests([0.0], 8, 8), spec)


# -- end to end ------------------------------------------------------------------------------
def _run(**wl):
    base = {"batch_size": 16, "prompt_len": 256, "output_len": 65}
    return simulate(serving("mixtral-8x7b", parallel={"tp": 1, "ep": 8}, **{**base, **wl}))


@pytest.mark.parametrize(
    "load", [{}, {"arrival_rate_per_s": 40.0, "duration_s": 1.0, "batch_size": None}]
)
def test_acceptance_zero_never_lowers_tpot(load):
    # a = 0: every verify yields one token, and the verify and drafts cost more than a decode
    plain = _run(**load)
    zero = _run(**load, speculative={**DRAFT, "acceptance_rate": 0.0})
    assert zero.tpot_s_p50 >= plain.tpot_s_p50
    assert zero.tpot_s_mean >= plain.tpot_s_mean
    assert zero.speculative["accepted_tokens"] == 0


def test_higher_acceptance_never_raises_tpot():
    # the same seeded uniforms accept at least as many drafts at a higher rate
    tpot = [
        _run(speculative={**DRAFT, "acceptance_rate": a}).tpot_s_mean
        for a in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    ]
    assert all(b <= a for a, b in pairwise(tpot))
    assert tpot[-1] < tpot[0]


@pytest.mark.parametrize("a", [0.0, 1.0])
def test_vllm_v1_equals_prefill_first_when_acceptance_is_certain(a):
    # a static batch whose prompts fit one step decodes alone: with every draft rejected or
    # every draft accepted both engines give each sequence the same tokens per step
    sp = {**DRAFT, "acceptance_rate": a}
    v1, pf = _run(speculative=sp), _run(speculative=sp, scheduler="prefill_first")
    assert v1.tpot_s_p50 == pytest.approx(pf.tpot_s_p50, rel=1e-9)


@pytest.mark.parametrize("a", [0.3, 0.6, 0.8])
def test_vllm_v1_draws_agree_with_the_expected_tokens_per_step(a):
    # prefill_first gives every sequence the expected (1 − a^(k+1)) / (1 − a) tokens per
    # step; vllm_v1 draws them per sequence: mean TPOT within 5 % over 16 × 64 tokens.
    # (Its static-batch throughput is lower: the batch ends with its unluckiest request.)
    sp = {**DRAFT, "acceptance_rate": a}
    v1, pf = _run(speculative=sp), _run(speculative=sp, scheduler="prefill_first")
    assert v1.tpot_s_mean == pytest.approx(pf.tpot_s_mean, rel=0.05)
    assert v1.speculative["tokens_per_verify_step"] == pytest.approx(
        v1.speculative["tokens_per_step"], rel=0.05
    )
    assert v1.tpot_s_p99 > v1.tpot_s_p50  # requests vary


# -- the cost of mixed steps -----------------------------------------------------------------
def _stepper(a: float = 0.5):
    s = serving(parallel={"tp": 2, "etp": 2}, speculative={**DRAFT, "acceptance_rate": a})
    return build_engine_step(s, ReplicaCost(s), ReplicaCost)


def test_a_verify_is_a_chunk_of_k_plus_one_scored_positions():
    e = _stepper()
    verifies = [(600, 4), (900, 4), (300, 4)]
    ctx = sum(o + 1 for o, _ in verifies)
    via_mixed = e.cost.mixed_step(0, 0.0, [], 0, verifies).total_s
    assert via_mixed == pytest.approx(e.speculator.verify(3, ctx).total_s, rel=1e-12)
    # a decode round of full verifies is the speculator's verify and drafts
    assert e.mixed_s(0, 0.0, [], 0, verifies) == pytest.approx(e.decode_s(3, ctx), rel=1e-12)


def test_a_mixed_step_reads_the_weights_once():
    # chunked prefill beside speculative decodes: at least each part alone, at most both
    e = _stepper()
    chunks, verifies = [(0, 512), (512, 256)], [(700, 4)] * 8
    ctx = sum(o + 1 for o, _ in verifies)
    mixed = e.mixed_s(0, 0.0, chunks, 1, verifies)
    prefill, verify_round = e.prefill_s(chunks, 1), e.decode_s(8, ctx)
    assert max(prefill, verify_round) <= mixed < prefill + verify_round


def test_the_drafter_runs_over_the_prompt_chunks():
    e = _stepper()
    sp = e.speculator
    # a chunk that does not end its prompt drafts nothing, but the drafter keeps its KV of it
    assert sp.draft_s(4, 2400.0, [(0, 1024)], 0) > sp.draft_s(4, 2400.0)
    alone = sp.drafter.prefill_chunks([(0, 1024)], 0).total_s
    assert sp.draft_s(0, 0.0, [(0, 1024)], 0) == pytest.approx(alone, rel=1e-12)


# -- the drafter's memory ----------------------------------------------------------------------
TINY = {
    "name": "tiny-mtp",
    "vocab_size": 1000,
    "n_layers": 2,
    "d_model": 64,
    "n_heads": 4,
    "n_kv_heads": 2,
    "ffn_hidden": 128,
    "mtp_depth": 1,
}


def _tiny(**wl):
    return scenario_from_dict(
        {
            "name": "tiny",
            "model": TINY,
            "cluster": {"gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 1},
            "parallel": {"tp": 1},
            "workload": {"stage": "inference", "prompt_len": 64, "output_len": 16, **wl},
        }
    )


def test_mtp_drafter_memory_by_hand():
    # one MTP module (DeepSeek-V3 §2.2) of d = 64, 4 heads of 16, 2 KV heads, SwiGLU 128:
    # attention 64·(64 + 2·32) + 64·64 = 12,288; FFN 3·64·128 = 24,576; block norms 128;
    # the module's two input norms 128, projection 2·64·64 = 8,192, output norm 64
    params = 12_288 + 24_576 + 128 + 128 + 8_192 + 64
    mtp = {"method": "mtp", "num_speculative_tokens": 2, "acceptance_rate": 0.7}
    plain, spec = _tiny(batch_size=4), _tiny(batch_size=4, speculative=mtp)
    assert spec.precision.weights_inference == "bf16" and spec.precision.kv_cache == "bf16"
    assert drafter_weights_bytes(spec) == params * 2
    assert drafter_weights_bytes(plain) == 0.0
    # its one attention layer: K and V of 2 heads of 16, bf16
    assert drafter_kv_bytes_per_token(spec) == 2 * 32 * 2
    assert kv_cache_bytes_per_token(spec.model, spec.parallel, spec.precision) == 2 * 2 * 32 * 2
    # the model's own weights do not count the MTP module unless it drafts
    base_plain, base_spec = inference_memory(plain, 0), inference_memory(spec, 0)
    assert base_spec.weights == base_plain.weights
    assert base_spec.drafter == params * 2
    assert base_spec.as_GB()["drafter"] == pytest.approx(params * 2 / 1e9)
    assert "drafter" not in base_plain.as_GB()
    # the pool loses the drafter's weights, and each token costs the drafter's KV too
    pool = kv_pool_bytes(plain, base_plain)
    assert kv_capacity_tokens(plain, base_plain) == int(pool // 256)
    assert kv_capacity_tokens(spec, base_spec) == int((pool - params * 2) // (256 + 128))
    assert kv_capacity_tokens(spec, base_spec) < kv_capacity_tokens(plain, base_plain)


def test_draft_model_memory_is_its_weights_on_the_target_tp():
    from moesim.analytic.params import count_params
    from moesim.specs.scenario import draft_scenario

    s = serving(parallel={"tp": 2, "etp": 2}, speculative={**DRAFT, "acceptance_rate": 0.5})
    draft = draft_scenario(s).model
    assert drafter_weights_bytes(s) == pytest.approx(count_params(draft).total * 2 / 2)
    per_layer = 2 * draft.kv_dim * 2 / min(2, draft.kv_heads)
    assert drafter_kv_bytes_per_token(s) == pytest.approx(draft.n_layers * per_layer)


def test_the_result_shows_the_drafter():
    r = _run(speculative={**DRAFT, "acceptance_rate": 0.6})
    plain = _run()
    assert r.memory_per_gpu_GB["drafter"] > 14.0  # mistral-7b's bf16 weights on one GPU
    assert r.kv_capacity_tokens < plain.kv_capacity_tokens
    assert r.speculative["drafter_weights_GB"] == pytest.approx(r.memory_per_gpu_GB["drafter"])
    target = kv_cache_bytes_per_token(plain_s().model, plain_s().parallel, plain_s().precision)
    assert r.speculative["kv_bytes_per_token"] == pytest.approx(
        target + r.speculative["drafter_kv_bytes_per_token"]
    )


def plain_s():
    return serving("mixtral-8x7b", parallel={"tp": 1, "ep": 8})
