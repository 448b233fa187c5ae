"""The decode-only replica: hand-computed times with a constant round, slots, and one-token
requests."""

from __future__ import annotations

import math

import pytest

from moesim.sim.decode_server import DecodeRequest, serve_decode


class Constant:
    """An engine whose every decode round takes ``round_s``."""

    def __init__(self, round_s: float, tokens_per_step: float = 1.0):
        self.round_s = round_s
        self.tokens_per_step = tokens_per_step
        self.calls: list[tuple[int, float]] = []

    def decode_s(self, batch: int, context_sum: float) -> float:
        self.calls.append((batch, context_sum))
        return self.round_s


def test_one_request_by_hand():
    r = DecodeRequest(
        arrival_s=0.0, ready_s=2.0, prefilled_s=1.5, prompt_tokens=100, output_tokens=11
    )
    log = serve_decode(Constant(0.1), [r], slots=4)
    assert r.admitted_s == 2.0
    assert r.first_token_s == pytest.approx(2.1)
    assert r.finish_s == pytest.approx(2.0 + 10 * 0.1)
    assert log.tokens_in_window == pytest.approx(11)
    assert log.busy_s == pytest.approx(1.0)


def test_slots_make_later_requests_wait():
    reqs = [DecodeRequest(0.0, 0.0, 0.0, 10, 3), DecodeRequest(0.0, 0.0, 0.0, 10, 3)]
    serve_decode(Constant(1.0), reqs, slots=1)
    assert reqs[0].finish_s == 2.0 and reqs[1].admitted_s == 2.0 and reqs[1].finish_s == 4.0


def test_contexts_grow_by_the_tokens_of_a_round():
    e = Constant(1.0, tokens_per_step=2.0)
    r = DecodeRequest(0.0, 0.0, 0.0, 10, 7)
    serve_decode(e, [r], slots=1)
    # 6 tokens after the prefill's: 3 rounds of 2; contexts 11, 13, 15
    assert [c for _, c in e.calls] == [11.0, 13.0, 15.0]
    assert r.finish_s == 3.0


def test_one_token_requests_need_no_decode():
    r = DecodeRequest(0.0, 1.25, 1.0, 10, 1)
    log = serve_decode(Constant(1.0), [r], slots=1)
    assert r.first_token_s == r.finish_s == 1.25 and not log.steps
    assert math.isclose(log.tokens_in_window, 1.0)


def test_requests_of_different_lengths_leave_when_their_own_tokens_are_out():
    e = Constant(1.0)
    short, long = DecodeRequest(0.0, 0.0, 0.0, 10, 3), DecodeRequest(0.0, 0.0, 0.0, 20, 5)
    log = serve_decode(e, [short, long], slots=2)
    assert short.finish_s == 2.0 and long.finish_s == 4.0
    # contexts: 11 + 21, then +2, then the short one leaves (its 10 + 3 keys)
    assert [c for _, c in e.calls] == [32.0, 34.0, 23.0, 24.0]
    assert log.tokens_in_window == pytest.approx(3 + 5)


# -- the paged (vllm_v1) decode replica -----------------------------------------------------------
class Steps:
    """The scheduler's view of an engine whose every step takes ``step_s``."""

    tokens_per_step = 1.0

    def __init__(self, step_s: float):
        self.step_s = step_s
        self.recomputed = 0  # prompt and generated tokens run again after a preemption

    def _t(self):
        from moesim.sim.engine_step import StepTime

        return StepTime(self.step_s)

    def decode(self, batch, context_sum):
        return self._t()

    def prefill_chunks(self, chunks, finished):
        self.recomputed += sum(c for _, c in chunks)
        return self._t()

    def mixed_step(self, decodes, context_sum, chunks, finished, verifies=None):
        self.recomputed += sum(c for _, c in chunks)
        return self._t()


def _paged(pool_tokens: int, n: int = 60, prompt: int = 100, output: int = 50):
    from moesim.sim.decode_server import serve_decode_paged
    from moesim.sim.serving_scheduler import EngineConfig

    reqs = [DecodeRequest(0.0, 0.0, 0.0, prompt, output) for _ in range(n)]
    view = Steps(0.01)
    engine = EngineConfig(1024, 8192, "vllm_v1", float(pool_tokens), 16)
    return reqs, serve_decode_paged(view, reqs, engine), view


def test_a_paged_replica_admits_at_least_the_whole_sequences_that_fit():
    pool = 20 * 150  # KV of 20 whole sequences (prompt 100 + output 50)
    reqs, paged, _ = _paged(pool)
    slots = pool // 150  # what reserving whole sequences admits in the same memory
    fresh = [DecodeRequest(0.0, 0.0, 0.0, 100, 50) for _ in range(60)]
    whole = serve_decode(Constant(0.01), fresh, slots)
    assert max(b for _, _, b in whole.steps) == slots
    assert max(b for _, _, b in paged.steps) >= slots
    # admission takes the prompt's blocks and the next token's: 7 blocks of 16 for 101 tokens
    assert max(b for _, _, b in paged.steps) == int(pool // 16) // 7
    assert all(r.finish_s > r.first_token_s >= r.admitted_s >= r.ready_s for r in reqs)


def test_preemption_is_counted_recomputed_and_vanishes_when_every_sequence_fits():
    n, prompt, output = 60, 100, 50
    _, roomy, roomy_view = _paged(n * 160, n, prompt, output)
    assert roomy.preemptions == 0 and roomy_view.recomputed == 0
    # (fewer preemptions in a smaller pool can happen: 60 requests preempt 17 times in a pool of
    # 40 sequences and 16 in one of 25, so the count is not asserted monotone)
    for pool in (40 * 160, 25 * 160, 12 * 160):
        reqs, log, view = _paged(pool, n, prompt, output)
        assert log.preemptions > 0 and view.recomputed >= log.preemptions * prompt
        assert log.peak_kv_blocks <= pool // 16
        assert all(r.finish_s > 0 for r in reqs)  # every request still finishes
        assert log.tokens_in_window == n * output  # and gets every token once


def test_paged_tokens_count_the_prefills_token_once():
    reqs, log, _ = _paged(10_000, n=3, prompt=40, output=5)
    assert log.tokens_in_window == 3 * 5
    for r in reqs:  # one step per token after the first: the first leaves with the first decode
        assert r.first_token_s - r.admitted_s == pytest.approx(0.01)
        assert r.finish_s - r.first_token_s == pytest.approx(3 * 0.01)
