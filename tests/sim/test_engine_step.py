"""The engine's step: pp > 1 decode pipelined over micro-batches (throughput at least the
sequential one's, TPOT one traversal of a micro-batch), and the scheduler's view of it."""

from __future__ import annotations

import math

import pytest
from serving_scale_scenarios import serving

from moesim.sim.engine_step import EngineStep, SchedulerView, build_engine_step
from moesim.sim.serving_step import ReplicaCost


def _engine(pp: int, **wl) -> EngineStep:
    s = serving("llama-3-70b", parallel={"tp": 2, "pp": pp}, **wl)
    return build_engine_step(s, ReplicaCost(s), ReplicaCost)


@pytest.mark.parametrize("pp", [2, 4])
@pytest.mark.parametrize("batch", [1, 3, 8, 64, 256])
def test_pipelined_decode_throughput_is_at_least_the_sequential_one(pp, batch):
    e = _engine(pp)
    ctx = batch * 700.0
    sequential_s = e.cost.decode(batch, ctx).total_s  # every stage in turn, one batch
    pipelined_s = e.decode_s(batch, ctx)
    assert batch / pipelined_s >= batch / sequential_s * (1 - 1e-12)
    assert batch / pipelined_s <= pp * batch / sequential_s * (1 + 1e-9)  # at most pp×


def test_a_round_is_one_traversal_of_a_micro_batch():
    e = _engine(4)
    mb = math.ceil(10 / 4)
    assert e.decode_microbatch(10) == mb
    assert e.decode_s(10, 7000.0) == pytest.approx(e.cost.decode(mb, 7000.0 * mb / 10).total_s)
    # batch 1: one micro-batch, the stages take turns: the sequential step
    assert e.decode_s(1, 700.0) == pytest.approx(e.cost.decode(1, 700.0).total_s)


def test_pp_one_is_the_plain_step():
    e = _engine(1)
    assert e.decode_s(32, 32 * 700.0) == e.cost.decode(32, 32 * 700.0).total_s
    chunks = [(0, 512), (0, 300)]
    assert e.prefill_s(chunks, 2) == e.cost.prefill_chunks(chunks, 2).total_s
    view = SchedulerView(e)
    assert view.decode(32, 32 * 700.0).total_s == e.decode_s(32, 32 * 700.0)
    assert view.prefill_chunks(chunks, 2).total_s == e.prefill_s(chunks, 2)
