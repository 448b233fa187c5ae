"""vLLM V1's pipeline cohorts (pp > 1): a request joins the batch being scheduled when it is
first admitted and keeps it; a round's micro-batch carries exactly its cohort's work
(moesim.sim.serving_pipeline, moesim.sim.scheduler_vllm_v1)."""

from __future__ import annotations

import itertools
import math

import pytest
from serving_scale_scenarios import serving

from moesim.sim.engine_step import SchedulerView, build_engine_step
from moesim.sim.serving_pipeline import Cohorts, split_round
from moesim.sim.serving_requests import Request
from moesim.sim.serving_scheduler import EngineConfig, serve
from moesim.sim.serving_step import ReplicaCost

BATCH_TOKENS = 8192  # one batch's budget (max_prefill_tokens' default)


def _engine(pp: int, model: str = "llama-3-70b"):
    s = serving(model, parallel={"tp": 2, "pp": pp})
    return build_engine_step(s, ReplicaCost(s), ReplicaCost)


class _Spy(SchedulerView):
    """The scheduler's view that records, at every round, each request's cohort."""

    def __init__(self, engine, requests: list[Request]):
        super().__init__(engine)
        self.requests = requests
        self.rounds: list[tuple[int, ...]] = []

    def _seen(self) -> None:
        self.rounds.append(tuple(r.cohort for r in self.requests))

    def decode(self, batch, context_sum, cohorts=None):
        self._seen()
        return super().decode(batch, context_sum, cohorts)

    def mixed_step(self, decodes, ctx, chunks, finished, verifies=None, cohorts=None):
        self._seen()
        return super().mixed_step(decodes, ctx, chunks, finished, verifies, cohorts)


def _serve(pp: int, requests: list[Request], pool: float = math.inf, seqs: int = 256):
    e = _engine(pp)
    spy = _Spy(e, requests)
    engine = EngineConfig(
        seqs, BATCH_TOKENS * pp, "vllm_v1", pool, max_concurrent_batches=pp
    )  # fmt: skip
    return e, spy, serve(spy, requests, engine)  # type: ignore[arg-type]


# -- the split -----------------------------------------------------------------------------------
def test_each_micro_batch_carries_exactly_its_cohort():
    c = Cohorts((5, 0, 2, 1), (500.0, 0.0, 90.0, 7.0), verifies=(2, 0), chunks=(1, 3))
    verifies = [(40, 3), (50, 3)]
    mbs = split_round(8, 597.0, [(0, 100), (0, 30)], 2, 4, 1000, verifies, cohorts=c)
    assert [(m.decodes, m.context_sum) for m in mbs] == [(5, 500.0), (0, 0.0), (2, 90.0), (1, 7.0)]
    assert [m.verifies for m in mbs] == [((50, 3),), (), ((40, 3),), ()]
    assert [m.chunks for m in mbs] == [(), ((0, 100),), (), ((0, 30),)]
    # a chunk past its batch's budget goes on in the next one
    mbs = split_round(
        2, 20.0, [(0, 150)], 1, 2, 100, cohorts=Cohorts((2, 0), (20.0, 0.0), (), (0,))
    )
    assert [m.chunks for m in mbs] == [((0, 98),), ((98, 52),)]
    assert [m.finished for m in mbs] == [0, 1]


@pytest.mark.parametrize("pp", [2, 4])
def test_even_cohorts_are_the_even_split(pp):
    """Two routes to one round: cohorts that hold the even split's counts give its time."""
    e = _engine(pp)
    for batch in (1, 7, 64):
        n = [batch // pp + (i < batch % pp) for i in range(pp)]
        c = Cohorts(tuple(n), tuple(700.0 * k for k in n))
        assert e.decode_s(batch, 700.0 * batch, c) == e.decode_s(batch, 700.0 * batch)


@pytest.mark.parametrize("model", ["llama-3-70b", "qwen3-30b-a3b"])
@pytest.mark.parametrize("pp", [2, 4])
def test_an_uneven_round_waits_for_its_largest_cohort(model, pp):
    """What holds: a round is at least the traversal of its largest cohort, which is at least
    the even split's largest (⌈B/pp⌉), so where the even round is bound by that traversal no
    cohorts are faster. The even split is not always the best case: see the next test."""
    e = _engine(pp, model)
    for batch in range(1, 10):
        even = e.decode_s(batch, 700.0 * batch)
        top = math.ceil(batch / pp)
        even_traversal = e.decode_forward(top, 700.0 * top).total_s
        for cuts in itertools.combinations_with_replacement(range(batch + 1), pp - 1):
            n = [b - a for a, b in zip((0, *cuts), (*cuts, batch), strict=True)]
            c = Cohorts(tuple(n), tuple(700.0 * k for k in n))
            uneven = e.decode_s(batch, 700.0 * batch, c)
            largest = e.decode_forward(max(n), 700.0 * max(n)).total_s
            assert uneven >= largest * (1 - 1e-12) and largest >= even_traversal * (1 - 1e-12)
            if even == pytest.approx(even_traversal, rel=1e-12):
                assert uneven >= even * (1 - 1e-12), (n, uneven, even)


def test_one_cohort_can_beat_the_even_split_when_the_last_stage_bounds_the_round():
    """llama-3-70b pp 2, two decodes: split evenly the last stage runs two micro-batches and
    reads its LM head (128k × 8192 weights) twice, which bounds the round; in one cohort it
    reads it once and the round is one traversal, shorter. So 'even is the best case' is
    false whenever the busiest stage, not the longest traversal, bounds the even round."""
    e = _engine(2)
    even = e.decode_s(2, 1400.0)
    one = e.decode_s(2, 1400.0, Cohorts((2, 0), (1400.0, 0.0)))
    assert one == pytest.approx(e.decode_forward(2, 1400.0).total_s, rel=1e-12)
    assert even > e.decode_forward(1, 700.0).total_s * (1 + 1e-9)  # the stage term bounds it
    assert one < even


# -- the scheduler -------------------------------------------------------------------------------
@pytest.mark.parametrize("pp", [2, 4])
def test_a_burst_lands_in_one_cohort_and_each_round_is_a_full_traversal(pp):
    """N requests arriving together, their prompts within one batch's budget: the first batch
    admits them all, every decode round is their whole traversal (the worst case of vllm-rbln
    PR #243: the pipeline works on one micro-batch at a time)."""
    reqs = [Request(0.0, 64, 20) for _ in range(8)]
    e, _spy, log = _serve(pp, reqs)
    assert {r.cohort for r in reqs} == {0}
    decodes = [(a, b) for kind, a, b, n in log.steps if kind == "decode"]
    assert len(decodes) == 19  # 20 tokens: the first from the prompt's round
    ctx = 8 * (64 + 1.0)  # the first decode round: 64 prompt tokens and the first output
    a, b = decodes[0]
    assert b - a == pytest.approx(e.decode_forward(8, ctx).total_s, rel=1e-12)
    # all 19 decode rounds are such traversals, one per round
    assert all(y - x >= (b - a) * (1 - 1e-12) for x, y in decodes)
    assert log.cohort_ratio_sum / log.cohort_rounds == pytest.approx(pp)
    assert log.cohort_max_sum / log.cohort_rounds == pytest.approx(8)


def test_staggered_arrivals_spread_over_the_cohorts():
    """Requests arriving at different points of a round are admitted by different batches'
    schedule() calls: they spread, and the rounds are far more even than a burst's."""
    pp = 4
    e = _engine(pp)
    round_s = e.decode_forward(1, 600.0).total_s  # about one decode round
    reqs = [Request(i * round_s * 0.37, 64, 60) for i in range(12)]
    _, _spy, log = _serve(pp, reqs)
    assert len({r.cohort for r in reqs}) == pp
    assert log.cohort_ratio_sum / log.cohort_rounds < pp * 0.6


def test_a_cohort_persists_across_rounds():
    pp = 4
    e = _engine(pp)
    round_s = e.decode_forward(1, 600.0).total_s
    reqs = [Request(i * round_s * 0.37, 64, 60) for i in range(12)]
    _, spy, _log = _serve(pp, reqs)
    for j, r in enumerate(reqs):
        seen = [rd[j] for rd in spy.rounds if rd[j] >= 0]
        assert len(seen) > 50 and set(seen) == {r.cohort}


def test_a_preempted_request_rejoins_whichever_batch_admits_it():
    """pp 2: a request arriving mid-round joins batch 1; the KV pool runs out, the newest (it)
    is preempted and readmitted when the first request finishes, into the batch that freed its
    seat (batch 0)."""
    pp = 2
    e = _engine(pp)
    round_s = e.decode_forward(1, 600.0).total_s
    reqs = [Request(0.0, 64, 100), Request(round_s * 0.3, 64, 100)]
    _, spy, _log = _serve(pp, reqs, pool=16 * 19)  # 19 blocks: not both at their longest
    assert reqs[1].preemptions >= 1
    seen = [rd[1] for rd in spy.rounds if rd[1] >= 0]
    assert seen[0] == 1 and seen[-1] == 0
    assert all(r.finish_s > 0 for r in reqs)


def test_pp_1_has_no_cohorts():
    reqs = [Request(0.0, 64, 20) for _ in range(4)]
    _, _spy, log = _serve(1, reqs)
    assert log.cohort_rounds == 0 and {r.cohort for r in reqs} == {0}


def test_the_decode_run_fast_path_keeps_the_cohorts(monkeypatch):
    """Two routes to one run: the decode-only fast path (a run of rounds stepped without the
    scheduler) and every round through the full scheduler give the same times."""
    import moesim.sim.scheduler_vllm_v1 as v1

    def run() -> list[tuple[float, float, int]]:
        e = _engine(4)
        round_s = e.decode_forward(1, 600.0).total_s
        reqs = [Request(i * round_s * 0.37, 64 + 8 * i, 40 + 3 * i) for i in range(10)]
        _serve(4, reqs)
        return [(r.first_token_s, r.finish_s, r.cohort) for r in reqs]

    runs: list[int] = []
    plain = v1._decode_run_length

    def counted(*args) -> int:
        runs.append(plain(*args))
        return runs[-1]

    monkeypatch.setattr(v1, "_decode_run_length", counted)
    fast = run()
    assert sum(n > 1 for n in runs) >= 3  # the fast path ran
    monkeypatch.setattr(v1, "_decode_run_length", lambda *a: 0)
    assert run() == fast
