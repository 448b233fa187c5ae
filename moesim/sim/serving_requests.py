"""Serving requests: what one request is (its arrival, its own prompt and output lengths, and
the times the engine gives it) and how requests arrive (a seeded Poisson process)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Request:
    """One request: when it arrives, its own prompt and output token counts, and what the
    engine gives it (first token and finish times, how often it was preempted).

    ``cached_tokens`` of the prompt are found in the prefix cache: their KV is not recomputed.
    """

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    first_token_s: float = math.nan
    finish_s: float = math.nan
    preemptions: int = 0

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise ValueError(
                f"a request needs at least one prompt and one output token, got prompt "
                f"{self.prompt_tokens}, output {self.output_tokens}"
            )
        if not 0 <= self.cached_tokens < self.prompt_tokens:
            raise ValueError(
                f"cached_tokens {self.cached_tokens} must be in [0, prompt_tokens "
                f"{self.prompt_tokens}): the last prompt token is always computed"
            )

    @property
    def ttft_s(self) -> float:
        """Time to first token: first token − arrival."""
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        """Time per output token after the first (nan for a one-token output)."""
        if self.output_tokens < 2:
            return math.nan
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)


def fixed_requests(
    arrivals_s: list[float], prompt_tokens: int, output_tokens: int
) -> list[Request]:
    """Requests arriving at ``arrivals_s``, every one with the same prompt and output length."""
    return [Request(a, prompt_tokens, output_tokens) for a in arrivals_s]


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
