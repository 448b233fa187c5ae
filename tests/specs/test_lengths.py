"""Length distributions: the figures they are given are the figures they draw."""

import math

import numpy as np
import pytest
from pydantic import ValidationError

from moesim.specs.lengths import LengthDistribution, max_length, mean_length, sample_lengths


def test_lognormal_draws_match_the_given_mean_and_p99():
    d = LengthDistribution(distribution="lognormal", mean=256, p99=2048)
    x = d.sample(400_000, np.random.default_rng(0))
    assert np.mean(x) == pytest.approx(256, rel=0.02)
    assert np.quantile(x, 0.99) == pytest.approx(2048, rel=0.03)
    assert d.quantile(0.99) == pytest.approx(2048, rel=1e-9)
    assert d.mean_tokens() == 256


def test_a_cap_lowers_the_mean_and_bounds_every_draw():
    free = LengthDistribution(distribution="lognormal", mean=256, p99=2048)
    capped = LengthDistribution(distribution="lognormal", mean=256, p99=2048, max=1024)
    x = capped.sample(100_000, np.random.default_rng(1))
    assert x.max() <= 1024 and x.min() >= 1
    assert capped.mean_tokens() < free.mean_tokens()
    assert np.mean(x) == pytest.approx(capped.mean_tokens(), rel=0.02)
    assert capped.max_tokens() == 1024
    assert free.max_tokens() == math.ceil(free.quantile(0.9999))


def test_draws_are_deterministic_per_seed():
    d = LengthDistribution(distribution="uniform", min=3, max=9)
    a = d.sample(1000, np.random.default_rng(7))
    b = d.sample(1000, np.random.default_rng(7))
    assert (a == b).all() and a.min() >= 3 and a.max() <= 9


def test_a_number_is_every_request_alike():
    assert mean_length(128) == 128 and max_length(128) == 128
    assert (sample_lengths(128, 5, np.random.default_rng(0)) == 128).all()


def test_empirical_file_relative_to_the_scenario(tmp_path):
    (tmp_path / "l.csv").write_text("arrival_s,output_len\n0,10\n1,30\n")
    d = LengthDistribution.model_validate(
        {"distribution": "empirical", "file": "l.csv", "column": "output_len"},
        context={"base_dir": tmp_path},
    )
    assert d.mean_tokens() == 20 and d.max_tokens() == 30
    (tmp_path / "one.txt").write_text("5\n7\n")
    d2 = LengthDistribution.model_validate(
        {"distribution": "empirical", "file": "one.txt"}, context={"base_dir": tmp_path}
    )
    assert sorted(set(d2.sample(100, np.random.default_rng(0)))) == [5, 7]


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"distribution": "lognormal", "mean": 256}, "needs p99"),
        ({"distribution": "lognormal", "mean": 256, "p99": 100}, "above its mean"),
        ({"distribution": "lognormal", "mean": 10, "p99": 1000}, "empirical"),
        ({"distribution": "uniform", "min": 9, "max": 3}, "swap"),
        ({"distribution": "empirical"}, "exactly one of values"),
        ({"distribution": "empirical", "file": "/no/such.csv"}, "not a readable file"),
    ],
)
def test_bad_distributions_name_the_fix(spec, words):
    with pytest.raises(ValidationError, match=words):
        LengthDistribution.model_validate(spec)
