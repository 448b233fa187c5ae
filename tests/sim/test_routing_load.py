"""Seeded expert loads: distributions, balance in the limit, capacity drops."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.sim.routing_load import RoutingSampler, expert_probabilities
from moesim.specs import Routing


def test_uniform_routing_approaches_perfect_balance_with_huge_batches():
    p = expert_probabilities(Routing(), 64)
    sampler = RoutingSampler(p, top_k=8, ranks=8, seed=1)
    small = sampler.draw_group(20, 64, 0).imbalance_N.mean()
    huge = sampler.draw_group(20, 1_000_000, 0).imbalance_N.mean()
    assert small > huge
    assert huge == pytest.approx(1.0, abs=2e-3)


def test_zipf_skew_makes_imbalance_and_sums_to_one():
    p = expert_probabilities(Routing(distribution="zipf", skew=1.2, seed=3), 64)
    assert p.sum() == pytest.approx(1.0)
    assert p.max() / p.min() == pytest.approx(64**1.2)
    sampler = RoutingSampler(p, top_k=2, ranks=8, seed=0)
    assert sampler.draw_group(10, 100_000, 0).imbalance_N.mean() > 1.2


def test_histogram_from_a_file_is_normalised(tmp_path):
    (tmp_path / "h.json").write_text("[1, 3, 0, 4]")
    r = Routing(distribution="histogram", histogram_file="h.json")
    assert expert_probabilities(r, 4, tmp_path).tolist() == [0.125, 0.375, 0.0, 0.5]
    (tmp_path / "h.csv").write_text("expert,tokens\n0,2\n1,2\n2,4\n3,0\n")
    r = Routing(distribution="histogram", histogram_file="h.csv")
    assert expert_probabilities(r, 4, tmp_path).tolist() == [0.25, 0.25, 0.5, 0.0]
    with pytest.raises(ValueError, match="one count per expert"):
        expert_probabilities(Routing(distribution="histogram", histogram=[1, 2]), 4)


def test_capacity_factor_drops_overflow_and_reports_it():
    p = expert_probabilities(Routing(distribution="histogram", histogram=[5, 1, 1, 1]), 4)
    sampler = RoutingSampler(p, top_k=1, ranks=2, capacity_factor=1.0, seed=0)
    d = sampler.draw_group(4, 1000, 0)
    cap = 1.0 * 2000 / 4
    assert (d.copies_NE <= cap).all()
    assert (d.dropped_N > 0).all()
    assert np.allclose(d.copies_NE.sum(axis=1) + d.dropped_N, d.offered_N)


def test_same_seed_same_draws_other_seed_other_draws():
    p = expert_probabilities(Routing(), 16)
    a = RoutingSampler(p, 2, 4, seed=7).draw_group(3, 500, 1).copies_NE
    b = RoutingSampler(p, 2, 4, seed=7).draw_group(3, 500, 1).copies_NE
    c = RoutingSampler(p, 2, 4, seed=8).draw_group(3, 500, 1).copies_NE
    assert (a == b).all() and not (a == c).all()


def test_an_enormous_zipf_skew_is_one_hot_without_overflow():
    """`skew: 1e6` printed numpy's overflow RuntimeWarning with a source path; in log space
    the top expert takes every token and nothing overflows."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = expert_probabilities(Routing(distribution="zipf", skew=1e6), 8)
    assert p.max() == 1.0 and p.sum() == 1.0
    mild = expert_probabilities(Routing(distribution="zipf", skew=1.0), 8)
    assert sorted(mild, reverse=True) == pytest.approx(
        [1 / k / sum(1 / j for j in range(1, 9)) for k in range(1, 9)]
    )


def test_source_to_rank_draws_follow_the_summed_expert_law():
    # 16 experts on 4 ranks, skewed: each source's copies per destination rank are a
    # multinomial over the ranks' summed probabilities (mean T·k·P_r), and sum to T·k
    probs = expert_probabilities(Routing(distribution="zipf", skew=1.5, seed=2), 16)
    sampler = RoutingSampler(probs, top_k=2, ranks=4, seed=7)
    draws = np.concatenate(list(sampler.draw_source_to_rank(500, 100, 0, 0, chunk=64)))
    assert draws.shape == (500, 4, 4)
    assert (draws.sum(axis=2) == 200).all()
    p_rank = probs.reshape(4, 4).sum(axis=1)
    mean = draws.mean(axis=(0, 1))
    sd = np.sqrt(200 * p_rank * (1 - p_rank) / 2000)
    assert np.all(np.abs(mean - 200 * p_rank) < 5 * sd)
    again = np.concatenate(list(sampler.draw_source_to_rank(500, 100, 0, 0, chunk=500)))
    assert np.array_equal(draws, again)  # blocks do not change the values
