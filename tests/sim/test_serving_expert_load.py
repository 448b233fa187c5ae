"""Routed experts a serving step touches (``moesim.sim.serving_expert_load``): the expected
count against its closed form, and the seeded draws against it and on the busiest EP rank."""

from __future__ import annotations

import numpy as np
import pytest
from serving_scale_scenarios import serving

from moesim.sim.serving_expert_load import expected_experts_touched
from moesim.sim.serving_step import ReplicaCost


def test_expected_experts_touched_is_the_uniform_closed_form():
    e, k = 8, 2
    probs = np.full(e, 1 / e)
    for t in (1, 3, 16, 200):
        assert expected_experts_touched(probs, k, t) == pytest.approx(e * (1 - (1 - k / e) ** t))
    assert expected_experts_touched(probs, k, 1) == pytest.approx(k)


def test_routing_draws_agree_with_the_closed_form_and_see_the_busiest_rank():
    # ep = 1: the busiest "rank" holds every expert, so touched = distinct experts
    c1 = ReplicaCost(serving("mixtral-8x7b", parallel={"tp": 2, "etp": 2}))
    for t in (1, 4, 8):
        touched, copies, _ = c1.rank_loads(t)
        assert touched == pytest.approx(8 * (1 - 0.75**t), rel=0.06)
        assert copies == pytest.approx(2 * t)
    # ep = 8, one expert per rank: at batch 1 the rank that got a token reads a whole expert,
    # although the group mean is k/ep = 0.25 experts per rank
    c8 = ReplicaCost(serving("mixtral-8x7b", parallel={"tp": 1, "ep": 8}))
    touched, copies, _ = c8.rank_loads(1)
    assert touched == 1.0 and copies == 1.0
