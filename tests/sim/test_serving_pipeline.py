"""Splitting a pipelined round into micro-batches (``moesim.sim.serving_pipeline``): every token
lands in exactly one batch, decodes spread evenly, chunks cut in order at the batch budget, and
a round's time is its longest traversal or its busiest stage."""

from __future__ import annotations

import pytest

from moesim.sim.serving_pipeline import MicroBatch, round_s, split_round


@pytest.mark.parametrize("pp", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "decodes, chunks, finished",
    [(0, [(0, 5000)], 1), (7, [(0, 3000), (200, 900)], 1), (13, [], 0), (2, [(64, 10)] * 9, 9)],
)
def test_every_token_lands_in_one_batch(pp, decodes, chunks, finished):
    ctx = decodes * 500.0
    mbs = split_round(decodes, ctx, chunks, finished, pp, batch_tokens=2048)
    assert 1 <= len(mbs) <= pp
    assert sum(mb.decodes for mb in mbs) == decodes
    assert sum(mb.context_sum for mb in mbs) == pytest.approx(ctx)
    assert sum(mb.finished for mb in mbs) == finished
    total = decodes + sum(c for _, c in chunks)
    assert sum(mb.tokens for mb in mbs) == total
    assert max(mb.tokens for mb in mbs) <= max(2048, -(-total // pp))
    sizes = [mb.decodes for mb in mbs if mb.decodes]
    assert not sizes or max(sizes) - min(sizes) <= 1
    # the pieces, in batch order, are the chunks cut where a batch is full
    pieces = [p for mb in mbs for p in mb.chunks]
    it = iter(pieces)
    for off, n in chunks:
        at = off
        while at < off + n:
            p_off, p_n = next(it)
            assert p_off == at and p_n > 0
            at += p_n
        assert at == off + n
    assert next(it, None) is None


def test_one_stage_is_the_step_itself():
    mbs = split_round(5, 100.0, [(0, 10_000)], 1, 1, batch_tokens=2048)
    assert mbs == [MicroBatch(5, 100.0, ((0, 10_000),), 1)]


def test_a_long_chunk_is_cut_at_the_batch_budget():
    mbs = split_round(0, 0.0, [(100, 5000)], 1, 4, batch_tokens=2048)
    assert [mb.chunks for mb in mbs] == [((100, 2048),), ((2148, 2048),), ((4196, 904),)]
    assert [mb.finished for mb in mbs] == [0, 0, 1]  # the prompt ends in its last piece


def test_round_time_is_the_longest_traversal_or_the_busiest_stage():
    assert round_s([3.0], [[1.0, 1.5]]) == 3.0  # one batch: its traversal
    assert round_s([3.0, 3.0], [[1.0, 1.9], [1.0, 1.9]]) == pytest.approx(3.8)  # last stage
    assert round_s([3.0, 2.0], [[1.0, 1.0], [0.5, 0.5]]) == 3.0


@pytest.mark.parametrize("pp", [1, 2, 3])
def test_verifies_go_whole_and_evenly(pp):
    verifies = [(100 + i, 3) for i in range(7)]
    mbs = split_round(4, 400.0, [(0, 3000)], 1, pp, batch_tokens=1024, verifies=verifies)
    assert [v for mb in mbs for v in mb.verifies] == verifies  # in order, none cut
    counts = [len(mb.verifies) for mb in mbs]
    assert max(counts) - min(counts) <= 1
    assert sum(mb.tokens for mb in mbs) == 4 + 3000 + 7 * 3
    assert all(not mb.speculative for mb in mbs)
    spec = split_round(5, 500.0, [], 0, pp, batch_tokens=1024, speculative=True)
    assert all(mb.speculative for mb in spec) and sum(mb.decodes for mb in spec) == 5
