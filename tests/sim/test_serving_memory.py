"""Serving memory: activations and dispatch buffers sized by the engine's largest step, the KV
pool what is left of usable HBM, the engine plan built from them."""

from __future__ import annotations

import pytest

from moesim.analytic.memory import kv_cache_bytes_per_token, serving_step_tokens
from moesim.scenario_io import scenario_from_dict
from moesim.sim.serving_memory import (
    inference_memory,
    kv_capacity_sequences,
    kv_capacity_tokens,
    kv_pool_bytes,
    plan_engine,
)
from moesim.sim.serving_requests import workload_requests


def _serving(model: str, gpu: str, gpus: int, parallel: dict, precision: dict, **workload):
    return scenario_from_dict(
        {
            "name": "serving",
            "model": model,
            "cluster": {"gpu": gpu, "nodes": 1, "gpus_per_node": gpus},
            "parallel": {"zero_stage": 0, "recompute": "none", **parallel},
            "precision": precision,
            "workload": {"stage": "inference", **workload},
        }
    )


def _deepseek_v3(**workload):
    """Issue 14's example: DeepSeek-V3 on 8×H200, fp8 weights, DP attention + EP 8, a batch
    of 64 prompts of 2048 tokens."""
    wl = {"prompt_len": 2048, "output_len": 512, "batch_size": 64, **workload}
    return _serving(
        "deepseek-v3",
        "h200-sxm",
        8,
        {"tp": 1, "dp": 8, "ep": 8},
        {"compute": "fp8", "weights_inference": "fp8", "kv_cache": "bf16"},
        **wl,
    )


def test_the_step_holds_a_chunk_not_every_prompt():
    s = _deepseek_v3()
    assert serving_step_tokens(s.workload, 64) == 8192  # 64 × 2048 prompts, 8192 per step
    assert serving_step_tokens(s.workload, 10_000) == 10_000  # a decode step of 10k sequences
    big = _deepseek_v3(max_num_batched_tokens=200_000)
    assert serving_step_tokens(big.workload, 64) == 64 * 2048


def test_deepseek_v3_on_8xh200_fits_about_270_sequences():
    """Sized by the whole batch's prompts (64 × 2048 tokens of activations and all-to-all
    buffers) it holds 94 sequences per replica (40 when HBM was read as 141e9 bytes); sized by
    the 8192-token step, 271 (216 at 141e9 bytes; an H200 reports 150.75e9)."""
    s = _deepseek_v3()
    base = inference_memory(s, 0)
    assert base.total < 0.85 * s.cluster.gpu.hbm_GB * 1e9
    narrow = kv_capacity_sequences(s, base)
    assert 250 <= narrow <= 300
    wide = _deepseek_v3(max_num_batched_tokens=64 * 2048)
    assert kv_capacity_sequences(wide, inference_memory(wide, 0)) < 0.4 * narrow


def test_gpu_memory_utilization_takes_its_share_off_the_pool():
    s = _deepseek_v3()
    capped = _deepseek_v3(gpu_memory_utilization=0.9)
    base = inference_memory(s, 0)
    cut = kv_pool_bytes(s, base) - kv_pool_bytes(capped, inference_memory(capped, 0))
    assert cut == pytest.approx(0.1 * s.cluster.gpu.hbm_GB * 1e9)
    per_token = kv_cache_bytes_per_token(s.model, s.parallel, s.precision)
    assert kv_capacity_tokens(s, base) == int(kv_pool_bytes(s, base) // per_token)


def test_the_engine_plan_of_a_static_batch_and_of_arrivals():
    s = _deepseek_v3()
    reqs, _ = workload_requests(s.workload, 8)
    plan = plan_engine(s, reqs)
    assert plan.engine.policy == "vllm_v1" and plan.engine.max_num_seqs == 64
    assert plan.engine.kv_capacity_tokens == plan.capacity_tokens and plan.fits
    pf = _deepseek_v3(scheduler="prefill_first")
    assert plan_engine(pf, reqs).engine.policy == "prefill_first"
    tiny = _deepseek_v3(gpu_memory_utilization=0.55)  # no room for one 2560-token sequence
    tplan = plan_engine(tiny, reqs)
    assert not tplan.fits and "does not fit" in tplan.note
