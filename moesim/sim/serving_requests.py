"""Serving requests: what one request is (its arrival, its own prompt and output lengths, and
the times the engine gives it) and how they arrive: a static batch, a seeded Poisson process
or a replayed trace, with lengths fixed, drawn from a distribution or read from the trace."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moesim.specs import InferenceWorkload
from moesim.specs.lengths import sample_lengths
from moesim.specs.request_trace import read_request_trace


@dataclass
class Request:
    """One request: when it arrives, its own prompt and output token counts, and what the
    engine gives it (first token and finish times, how often it was preempted).

    ``cached_tokens`` of the prompt are found in the prefix cache: their KV is not recomputed.
    A ``prefilled`` request (the decode pool of PD disaggregation) arrives with its whole
    prompt's KV cache, sent by a prefill replica, and its first token: the KV is its own
    (charged to its blocks) and is recomputed, with its generated tokens, if it is preempted.
    """

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    first_token_s: float = math.nan
    finish_s: float = math.nan
    preemptions: int = 0
    prefilled: bool = False
    cohort: int = -1  # vllm_v1, pp > 1: the micro-batch of the round it last rode

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


def workload_requests(w: InferenceWorkload, replicas: int) -> tuple[list[Request], float]:
    """One replica's requests of a serving workload and its throughput window (seconds; inf
    for a static batch, timed to its last token).

    - static ``batch_size``: that many requests at t=0;
    - ``arrival_rate_per_s``: Poisson arrivals at the rate / replicas over ``duration_s``;
    - ``trace``: the trace's requests, every ``replicas``-th one (round-robin from the first),
      at their own arrival times; the window is ``duration_s`` when given, else the trace's
      span (a trace whose requests all arrive at once is timed like a static batch).

    Lengths are the trace's, or drawn per request from ``prompt_len`` / ``output_len`` (seeded
    by ``seed``: a number gives every request that length). ``prefix_hit_rate`` of each prompt
    (all but its last token at most) is found in the prefix cache.
    """
    reqs, window = _requests(w, replicas)
    if w.prefix_hit_rate > 0:
        for r in reqs:
            r.cached_tokens = min(int(w.prefix_hit_rate * r.prompt_tokens), r.prompt_tokens - 1)
    return reqs, window


def _requests(w: InferenceWorkload, replicas: int) -> tuple[list[Request], float]:
    if w.trace is not None:
        tr = read_request_trace(w.trace)
        sl = slice(0, None, replicas)
        reqs = [
            Request(float(a), int(p), int(o))
            for a, p, o in zip(
                tr.arrival_s[sl], tr.prompt_tokens[sl], tr.output_tokens[sl], strict=True
            )
        ]
        window = w.duration_s if "duration_s" in w.model_fields_set else tr.span_s
        return reqs, window if window > 0 else math.inf
    if w.batch_size is not None:
        arrivals, window = [0.0] * w.batch_size, math.inf
    else:
        assert w.arrival_rate_per_s is not None
        arrivals = poisson_arrivals_s(w.arrival_rate_per_s / replicas, w.duration_s, w.seed)
        window = w.duration_s
    if isinstance(w.prompt_len, int) and isinstance(w.output_len, int):
        return fixed_requests(arrivals, w.prompt_len, w.output_len), window
    rng = np.random.default_rng([w.seed, 0x1E9])
    prompts = sample_lengths(w.prompt_len, len(arrivals), rng)
    outputs = sample_lengths(w.output_len, len(arrivals), rng)
    reqs = [Request(a, int(p), int(o)) for a, p, o in zip(arrivals, prompts, outputs, strict=True)]
    return reqs, window
