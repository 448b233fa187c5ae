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
