"""How a post-training step's phases add up: synchronous sum, or the off-policy overlap of the
next rollout with this step's training (disaggregated only)."""

from __future__ import annotations

import itertools

import pytest

from moesim.scenario_io import scenario_from_dict
from moesim.sim.rl_phases import Phase, empty_parts
from moesim.sim.rl_schedule import COLOCATED_NOTE, compose_step
from moesim.sim.run import simulate

GRPO = {"stage": "grpo", "global_batch": 8, "group_size": 4, "prompt_len": 256, "response_len": 256}
DISAGG = {"rollout": "disaggregated", "rollout_gpus": 8}


def scenario(**workload):
    return scenario_from_dict(
        {
            "name": "grpo",
            "model": "llama-3-8b",
            "cluster": {"gpu": "h100-sxm", "nodes": 1},
            "parallel": {"tp": 1, "pp": 1, "zero_stage": 1},
            "workload": {**GRPO, **workload},
        }
    )


def phases(sync: float, rollout: float, *training: float) -> list[Phase]:
    names = ["weight_sync", "rollout"] + [f"p{i}" for i in range(len(training))]
    times = [sync, rollout, *training]
    out = []
    for n, t in zip(names, times, strict=True):
        parts = empty_parts()
        parts["compute"] = t
        out.append(Phase(n, t, parts))
    return out


def test_one_step_off_policy_hides_the_shorter_of_rollout_and_training():
    s = scenario(**DISAGG, off_policy_steps=1)
    # rollout longer than training: step = sync + rollout, rollout shows only what is exposed
    step = compose_step(s, phases(0.5, 10.0, 1.0, 3.0))
    assert step.time_s == pytest.approx(0.5 + 10.0)
    shown = {ph.name: ph.time_s for ph in step.phases}
    assert shown["rollout"] == pytest.approx(10.0 - 4.0)
    assert sum(shown.values()) == pytest.approx(step.time_s)  # phases still stack to the step
    assert step.extra["rollout_time_s"] == 10.0 and step.extra["rollout_overlapped_s"] == 4.0
    # training longer: the rollout is entirely hidden
    step = compose_step(s, phases(0.5, 2.0, 1.0, 3.0))
    assert step.time_s == pytest.approx(0.5 + 4.0)
    assert {ph.name: ph.time_s for ph in step.phases}["rollout"] == 0.0


@pytest.mark.parametrize(("sync", "rollout", "train"), [(0, 1, 1), (2, 9, 1), (0.1, 1, 7)])
def test_off_policy_never_slows_a_step_and_two_steps_ahead_equals_one(sync, rollout, train):
    sync_step = compose_step(scenario(**DISAGG), phases(sync, rollout, train)).time_s
    ahead = [
        compose_step(scenario(**DISAGG, off_policy_steps=k), phases(sync, rollout, train)).time_s
        for k in (1, 2, 4)
    ]
    assert sync_step == pytest.approx(sync + rollout + train)
    assert all(a <= sync_step for a in ahead)
    assert ahead[0] == ahead[1] == ahead[2]  # steady state: staleness beyond 1 buys nothing here


def test_colocated_off_policy_stays_synchronous_and_says_why():
    on = compose_step(scenario(), phases(0.5, 10.0, 3.0))
    off = compose_step(scenario(off_policy_steps=1), phases(0.5, 10.0, 3.0))
    assert off.time_s == on.time_s == pytest.approx(13.5)
    assert off.extra["off_policy_note"] == COLOCATED_NOTE


def test_off_policy_never_slows_a_simulated_step():
    """The property on whole simulated steps, over placements, lengths and group sizes."""
    cases = itertools.product(({}, DISAGG), (64, 1024), (2, 8))
    for placement, response, group in cases:
        wl = {**placement, "response_len": response, "group_size": group}
        sync = simulate(scenario(**wl))
        off = simulate(scenario(**wl, off_policy_steps=1))
        assert off.step_time_s <= sync.step_time_s * (1 + 1e-12)
        if placement:  # disaggregated: strictly faster, by the hidden part of the shorter side
            assert off.step_time_s < sync.step_time_s
            assert off.rollout_time_s == pytest.approx(sync.rollout_time_s)
            tb = off.time_breakdown_s
            phases_sum = sum(
                v
                for k, v in tb.items()
                if k in ("weight_sync", "rollout", "reward", "reference", "training")
            )
            assert phases_sum == pytest.approx(off.step_time_s)
