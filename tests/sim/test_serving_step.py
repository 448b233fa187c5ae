"""One engine step's cost: the weight read of a decode, the experts an MoE decode reads as the
batch grows, a prefill's K/V read per query tile, expert offloading over PCIe, a mixed step of
decodes and prompt chunks, and the HBM bytes a step moves (what MBU divides)."""

from __future__ import annotations

import pytest
from serving_scale_scenarios import as_dict, serving

from moesim.scenario_io import scenario_from_dict
from moesim.sim.serving_step import FLASH_QUERY_TILE, ReplicaCost
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


def test_decode_step_reads_active_weights_at_batch_one():
    """A dense decode step at batch 1 and short context is the weight read at HBM speed."""
    s = serving("llama-2-13b", gpus_per_node=1, prompt_len=16, output_len=2)
    c = ReplicaCost(s)
    step = c.decode(1, 17)
    weights = c.counts.total * 2.0  # bf16
    hbm = s.cluster.gpu.hbm_TBps * 1e12
    assert weights / hbm < step.total_s < 1.5 * weights / hbm
    # int4 weights: a quarter of the bytes
    int4 = ReplicaCost(
        scenario_from_dict({**as_dict(s), "precision": {"weights_inference": "int4"}})
    )
    assert int4.decode(1, 17).total_s < 0.4 * step.total_s


def test_moe_decode_time_rises_with_batch_faster_than_dense():
    moe = ReplicaCost(serving("mixtral-8x7b", parallel={"tp": 2, "etp": 2}))
    dense = ReplicaCost(serving("llama-2-13b", parallel={"tp": 1}))
    ctx = 512

    def growth(c: ReplicaCost, b: int) -> float:
        return c.decode(b, b * ctx).total_s / c.decode(1, ctx).total_s

    for b in (4, 16, 64):
        assert growth(moe, b) > growth(dense, b) + 0.3
    touched = [moe.decode(b, b * ctx).experts_touched for b in (1, 2, 4, 16, 64)]
    assert touched == sorted(touched) and touched[0] == pytest.approx(2) and touched[-1] > 7.99
    # the growth is the expert weights: bytes read go from 2 experts per layer to all 8
    read = [moe.decode(b, b * ctx).expert_bytes_read for b in (1, 64)]
    assert read[1] / read[0] == pytest.approx(4.0, rel=0.01)


def test_prefill_reads_each_key_once_per_query_tile():
    """Llama-2-13B (MHA: a K/V per head) prefilling 4096 tokens: the attention core reads K/V
    once per tile of FLASH_QUERY_TILE queries; read once per query it would dominate."""
    c = ReplicaCost(serving("llama-2-13b", prompt_len=4096))
    L = 4096
    keys = L * (L + 1) / 2
    tiled = c._attention_core_s(L, keys, FLASH_QUERY_TILE)
    per_query = c._attention_core_s(L, keys, 1.0)
    assert per_query > 3 * tiled
    prefill = c.prefill(1, L)
    assert prefill.attention_s == pytest.approx(c._base_cost(L, 1).attention_s + tiled)


def test_expert_offload_takes_the_calibrated_pcie_fraction(tmp_path):
    from moesim.sim.profile import Value, default_profile

    prof = default_profile()
    half = prof.model_copy(
        update={"links": prof.links.model_copy(update={"pcie": Value(value=0.5, source="test")})}
    )
    path = tmp_path / "half-pcie.json"
    path.write_text(half.model_dump_json())
    base = serving("mixtral-8x7b", parallel={"tp": 2, "etp": 2}, batch_size=4)
    d = as_dict(base)
    d["workload"] = {**d["workload"], "expert_offload": True}
    nominal = ReplicaCost(scenario_from_dict(d)).decode(4, 4 * 600)
    d["simulation"] = {**d.get("simulation", {}), "profile": str(path)}
    measured = ReplicaCost(scenario_from_dict(d)).decode(4, 4 * 600)
    assert measured.offload_s == pytest.approx(2 * nominal.offload_s)
