"""One engine step's cost: a mixed step of decodes and prompt chunks, and the HBM bytes a step
moves (what MBU divides)."""

from __future__ import annotations

import pytest

from moesim.scenario_io import scenario_from_dict
from moesim.sim.serving_step import ReplicaCost
from moesim.specs import BYTES_PER_ELEMENT


def _cost(model: str = "llama-3-8b", **precision) -> ReplicaCost:
    return ReplicaCost(
        scenario_from_dict(
            {
                "name": "serving",
                "model": model,
                "cluster": {"gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 1},
                "parallel": {"zero_stage": 0, "recompute": "none"},
                "precision": precision or {},
                "workload": {"stage": "inference", "batch_size": 1},
            }
        )
    )


def test_a_mixed_step_without_chunks_is_a_decode_and_without_decodes_a_prefill():
    c = _cost()
    assert c.mixed_step(8, 8 * 300.0, [], 0) == c.decode(8, 8 * 300.0)
    assert c.mixed_step(0, 0.0, [(0, 512)], 1) == c.prefill_chunks([(0, 512)], 1)


def test_a_mixed_step_reads_the_weights_once():
    """Decodes riding along with a chunk cost far less than a decode step of their own: the
    weight read (most of a small-batch decode) is shared; the step is at least the longer of
    the two and no more than their sum."""
    c = _cost()
    decode = c.decode(16, 16 * 1000.0).total_s
    prefill = c.prefill_chunks([(0, 2048)], 1).total_s
    mixed = c.mixed_step(16, 16 * 1000.0, [(0, 2048)], 1).total_s
    assert max(decode, prefill) <= mixed < decode + prefill
    assert mixed - prefill < 0.5 * decode


def test_hbm_bytes_of_a_decode_step_are_the_weights_and_the_kv_read():
    """Batch-1 decode of a dense model: the bytes are every weight once (at the inference
    weight precision) but the input embedding (one row looked up), the KV cache of the context,
    and small activations."""
    c = _cost(weights_inference="bf16", kv_cache="bf16")
    ctx = 4000.0
    step = c.decode(1, ctx)
    m = c.m
    weights = (c.counts.total - m.vocab_size * m.d_model) * BYTES_PER_ELEMENT["bf16"]
    kv = m.n_layers * 2 * m.kv_dim * 2 * (ctx + 1)
    assert step.hbm_bytes == pytest.approx(weights + kv, rel=0.02)
    fp8 = _cost(weights_inference="fp8", kv_cache="bf16").decode(1, ctx)
    assert fp8.hbm_bytes < 0.6 * step.hbm_bytes
