"""A rank's breakdown read off its log as arrays equals the plain loop over the log's tuples,
bit for bit, on simulated logs and on random ones with every kind of entry."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
from span_reference import union_loop

from moesim.sim.breakdown import RankLog, measure, rank_breakdown
from moesim.sim.engine import COMM_CATEGORIES, run_to_completion
from moesim.sim.run import build_context
from moesim.sim.training_step import pipeline_pass


def _breakdown_loop(log, step_s):
    """The reference: one pass per quantity over the log's tuples."""
    compute = []
    for entry in log:
        if entry[0] != "compute":
            continue
        a, b = entry[3], entry[4]
        if compute and compute[-1][1] == a:  # back-to-back: one span
            compute[-1] = (compute[-1][0], b)
        else:
            compute.append((a, b))
    comm = [(e[3], e[4]) for e in log if e[0] != "compute"]
    busy_s = union_loop(compute)
    exposed_s = union_loop(comm + compute) - busy_s
    out = {
        "compute": busy_s,
        "exposed_comm": exposed_s,
        "bubble": max(step_s - busy_s - exposed_s, 0.0),
    }
    per_cat = defaultdict(float)
    for entry in log:
        cat = entry[2]
        if len(entry) == 5:
            per_cat[cat] += entry[4] - entry[3]
        elif cat != "compute":  # a hold outside plain compute: per kernel
            _, ops, _, t, _, f = entry
            for _, d in ops:
                if d > 0:
                    per_cat[cat] += (t + d * f) - t
                    t += d * f
    for cat in (*COMM_CATEGORIES, "optimizer"):
        out[cat] = per_cat[cat]
    return out


_COMM_KINDS = (
    ("ep", "all_to_all"),
    ("tp", "tp_comm"),
    ("dp", "dp_comm"),
    ("pp", "pp_comm"),
    ("cp", "cp_comm"),
    ("d2h", "offload"),
    ("pp", "other"),  # a category the breakdown does not report
)


def _random_log(rng: random.Random, n: int):
    """Compute kernels and holds (some back to back, some after a gap, some of the
    optimizer's), collectives of every category overlapping them, and a category the
    breakdown does not report."""
    log, t = [], 0.0
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            t += rng.choice((0.0, 0.0, rng.expovariate(50.0)))  # often back to back
            ops = [(f"k{i}", rng.choice((0.0, rng.expovariate(100.0)))) for i in range(3)]
            f = rng.choice((1.0, 1.0, 1.0 + rng.random()))
            category = rng.choice(("compute", "compute", "optimizer", "recompute"))
            end = t
            for _, d in ops:
                if d > 0:
                    end += d * f
            log.append(("compute", ops, category, t, end, f))
            t = end
        elif kind < 0.6:
            end = t + rng.expovariate(100.0)
            log.append(("compute", "k", rng.choice(("compute", "optimizer")), t, end))
            t = end
        else:
            stream, category = rng.choice(_COMM_KINDS)
            a = max(0.0, t - rng.expovariate(30.0))
            log.append((stream, "c", category, a, a + rng.expovariate(30.0)))
    return log


@pytest.mark.parametrize("seed", range(30))
def test_rank_breakdown_equals_the_loop_on_random_logs(seed):
    rng = random.Random(seed)
    log = _random_log(rng, rng.choice((0, 1, 3, 50, 2000)))
    step_s = max((e[4] for e in log), default=0.0) + rng.choice((0.0, 0.01))
    assert rank_breakdown(RankLog.of(log), step_s) == _breakdown_loop(log, step_s)


def test_measure_equals_the_loop_on_a_simulated_step(small_moe):
    """The ranks of a real pipeline step (holds, all-to-alls, pipeline sends, the DP
    all-reduce): the step time and each rank's parts as the loop has them."""
    p = small_moe.parallel.model_copy(update={"pp": 2, "microbatch_size": 1})
    s = small_moe.model_copy(update={"parallel": p})
    ctx = build_context(s, "full", vector=False)
    run_to_completion(ctx.env, pipeline_pass(ctx))
    ranks = [ctx.ranks[g] for g in sorted(ctx.ranks)]
    assert sum(len(r.log) for r in ranks) > 100
    step_s = max(e[4] for r in ranks for e in r.log)
    assert measure(ranks)[0] == step_s
    for r in ranks:
        assert rank_breakdown(RankLog.of(r.log), step_s) == _breakdown_loop(r.log, step_s)


def test_an_optimizer_hold_adds_its_kernels_one_by_one():
    """A hold of the optimizer's category adds each kernel's time to the total, as the loop
    does, which differs in the last bits from adding the hold's whole span: logs where the
    two differ (a long optimizer interval first, short kernels of fine times after) must
    still match the loop."""
    rng = random.Random(0)
    whole_span_differs = False
    for _ in range(20):
        log = [("compute", "optimizer", "optimizer", 10.0, 20.0)]
        t = rng.uniform(1e-3, 2e-3)
        for _ in range(5):
            ops = [(f"k{i}", rng.uniform(1e-7, 1e-6)) for i in range(4)]
            f = 1.0 + rng.random()
            end = t
            for _, d in ops:
                end += d * f
            log.append(("compute", ops, "optimizer", t, end, f))
            t = end
        got = rank_breakdown(RankLog.of(log), 20.0)["optimizer"]
        assert got == _breakdown_loop(log, 20.0)["optimizer"]
        whole = 0.0
        for e in log:
            whole += e[4] - e[3]
        whole_span_differs |= whole != got
    assert whole_span_differs
