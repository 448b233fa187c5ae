"""Serving requests: what one request is (its arrival, its own prompt and output lengths, and
the times the engine gives it) and how requests arrive (a seeded Poisson process)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Request:
    arrival_s: float
    first_token_s: float = math.nan
    finish_s: float = math.nan


def poisson_arrivals_s(rate_per_s: float, duration_s: float, seed: int) -> list[float]:
    """Arrival times of a Poisson process of ``rate_per_s`` on [0, duration_s), seeded."""
    rng = np.random.default_rng([seed, 0xA77])
    out: list[float] = []
    t = 0.0
    while True:
        t += float(rng.exponential(1.0 / rate_per_s))
        if t >= duration_s:
            return out
        out.append(t)
