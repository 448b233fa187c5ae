"""Which routed experts a serving step's tokens touch, and how many (token, expert) copies each
EP rank receives: what a step reads of the experts' weights and what its all-to-all carries.

Legend: ``T`` tokens entering one EP group in a step, ``E`` routed experts, ``k`` top-k,
``N`` routing draws, ``R`` EP ranks.

A decode step routes few tokens, so which experts they hit matters: with T tokens and uniform
top-k routing the expected number of distinct experts per layer is E·(1 − (1 − k/E)^T), and
one expert per rank at batch 1 costs a whole expert read on the rank that got the token
although the group's mean is k/ep experts per rank. The busiest rank's load is therefore drawn
from the routing distribution (seeded top-k sampling without replacement), or, past
``MAX_DRAW_CELLS`` (token, expert) cells, replaced by its expectation. Apart from the step's
cost model (``moesim.sim.serving_step``) because it is the routing side: sampling, not timing.
"""

from __future__ import annotations

import numpy as np

#: above this many (token, expert) cells a routing draw is replaced by its expectation
MAX_DRAW_CELLS = 2_000_000
ROUTING_DRAWS = 32


def expected_experts_touched(probs_E: np.ndarray, top_k: int, tokens: float) -> float:
    """Distinct experts hit by ``tokens`` tokens of one layer: Σ_e 1 − (1 − q_e)^T, with
    q_e = min(1, k·p_e) the chance a token picks expert e (exactly k/E for uniform routing,
    giving E·(1 − (1 − k/E)^T))."""
    q = np.minimum(1.0, top_k * probs_E)
    return float(np.sum(1.0 - (1.0 - q) ** tokens))


def busiest_rank_load(
    probs_E: np.ndarray, top_k: int, ep: int, seed: int, tokens_group: int
) -> tuple[float, float, np.ndarray]:
    """(experts touched, copies) on the busiest EP rank for ``tokens_group`` tokens, averaged
    over seeded routing draws (each token picks k distinct experts ∝ p_e, Gumbel top-k),
    and the copies each EP rank receives per draw (N, R)."""
    e, k = len(probs_E), top_k
    t = tokens_group
    if t * e > MAX_DRAW_CELLS:  # many tokens: every expert is hit, loads near their mean
        per_rank = probs_E.reshape(ep, e // ep)
        q = np.minimum(1.0, k * per_rank)
        touched = float(np.max(np.sum(1.0 - (1.0 - q) ** t, axis=1)))
        loads_NR = t * k * per_rank.sum(axis=1)[None, :]
        copies = float(loads_NR.max())
    else:
        n = int(min(ROUTING_DRAWS, max(2, MAX_DRAW_CELLS // (t * e))))
        rng = np.random.default_rng([seed, 0x5E2E, t])
        keys = np.log(np.maximum(probs_E, 1e-300)) + rng.gumbel(size=(n, t, e))
        chosen = np.argpartition(-keys, k - 1, axis=2)[:, :, :k]  # (N, T, k)
        flat = (np.arange(n)[:, None, None] * e + chosen).ravel()
        counts = np.bincount(flat, minlength=n * e).reshape(n, ep, e // ep)
        touched = float(np.mean(np.max((counts > 0).sum(axis=2), axis=1)))
        loads_NR = counts.sum(axis=2).astype(float)
        copies = float(np.mean(loads_NR.max(axis=1)))
    return touched, copies, loads_NR
