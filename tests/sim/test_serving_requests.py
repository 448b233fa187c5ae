"""Requests: their own lengths, their latencies, and seeded Poisson arrivals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.sim.serving_requests import Request, poisson_arrivals_s


def test_latencies_of_one_request():
    r = Request(1.0, 100, 5, first_token_s=1.5, finish_s=2.3)
    assert r.ttft_s == pytest.approx(0.5)
    assert r.tpot_s == pytest.approx(0.2)
    assert math.isnan(Request(0.0, 10, 1, first_token_s=1.0, finish_s=1.0).tpot_s)


@pytest.mark.parametrize("bad", [{"prompt_tokens": 0}, {"output_tokens": 0}, {"cached_tokens": 10}])
def test_bad_requests_are_refused(bad):
    args = {"arrival_s": 0.0, "prompt_tokens": 10, "output_tokens": 4, **bad}
    with pytest.raises(ValueError):
        Request(**args)


def test_poisson_arrivals_are_seeded_and_have_the_rate():
    a = poisson_arrivals_s(50.0, 200.0, 3)
    assert a == poisson_arrivals_s(50.0, 200.0, 3)
    assert len(a) == pytest.approx(50 * 200, rel=0.05)
    assert np.all(np.diff(a) > 0) and a[-1] < 200.0
