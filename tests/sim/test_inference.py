"""Serving through ``simulate``: TTFT and TPOT from the step costs, replicas, the KV cache's
limit on a batch and on concurrency, experts touched, FLOPs per token, expert offloading and
fp8 weights, seeds, traces, the scenario files, prefix caching, MBU and goodput. The step costs
themselves: test_serving_step.py; the queue: test_serving_queue.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from serving_scale_scenarios import as_dict, serving

from moesim.analytic.flops import attention_core_flops
from moesim.analytic.memory import kv_cache_bytes_per_token
from moesim.scenario_io import load_scenario, load_yaml, scenario_from_dict
from moesim.sim.run import simulate
from moesim.sim.serving_step import ReplicaCost
from moesim.sweep import load_sweep, run_sweep


def test_static_batch_ttft_is_the_prefill_and_tpot_the_decode_steps():
    s = serving("llama-3-8b", gpus_per_node=1, batch_size=4, prompt_len=256, output_len=8)
    r = simulate(s)
    c = ReplicaCost(s)
    prefill = c.prefill(4, 256).total_s
    decodes = [c.decode(4, 4 * (256 + 1 + j)).total_s for j in range(7)]
    assert r.ttft_s_p50 == pytest.approx(prefill) and r.ttft_s_p99 == pytest.approx(prefill)
    assert r.tpot_s_p50 == pytest.approx(sum(decodes) / 7)
    assert r.output_tokens_per_s == pytest.approx(4 * 8 / (prefill + sum(decodes)))
    assert r.cost_per_million_tokens_usd == pytest.approx(2.0 / 3600 / r.output_tokens_per_s * 1e6)


def test_replicas_multiply_throughput_and_split_the_rate():
    one = simulate(serving("llama-3-8b", gpus_per_node=1, batch_size=8))
    eight = simulate(serving("llama-3-8b", gpus_per_node=8, batch_size=8))
    assert eight.replicas == 8
    assert eight.output_tokens_per_s == pytest.approx(8 * one.output_tokens_per_s)
    assert eight.tokens_per_s_per_gpu == pytest.approx(one.tokens_per_s_per_gpu)


def test_static_batch_beyond_the_kv_capacity_says_why_it_does_not_fit():
    """prefill_first reserves every sequence's whole KV: a batch beyond it does not fit."""
    s = serving(
        "llama-2-13b",
        gpus_per_node=1,
        prompt_len=2048,
        output_len=256,
        batch_size=128,
        scheduler="prefill_first",
    )
    r = simulate(s)
    assert not r.fits_in_memory
    assert r.kv_capacity_sequences < 128 and r.concurrency_limit == 128
    assert "batch_size 128" in r.memory_note
    assert f"only {r.kv_capacity_sequences} fit" in r.memory_note
    ok = simulate(
        serving("llama-2-13b", gpus_per_node=1, prompt_len=2048, output_len=256, batch_size=4)
    )
    assert ok.fits_in_memory and "memory_note" not in ok.to_json_dict()


def test_static_batch_beyond_the_kv_pool_is_paged_and_preempted_under_vllm_v1():
    """vllm_v1 pages the KV cache: a batch of 128 where ~27 fit runs, the engine never holds
    more KV than its pool, and requests are queued or preempted (recomputed) to get there."""
    r = simulate(
        serving("llama-2-13b", gpus_per_node=1, prompt_len=2048, output_len=256, batch_size=128)
    )
    assert r.fits_in_memory and r.scheduler == "vllm_v1"
    assert r.kv_capacity_sequences < 128 and r.concurrency_limit == 128
    per_token = kv_cache_bytes_per_token(
        *(lambda s: (s.model, s.parallel, s.precision))(serving("llama-2-13b", gpus_per_node=1))
    )
    assert r.memory_per_gpu_GB["kv_cache"] * 1e9 <= r.kv_capacity_tokens * per_token + 1
    assert r.mean_decode_batch <= r.kv_capacity_tokens / 2049
    assert r.preemptions >= 0 and r.requests == 128


def test_result_reports_experts_touched_and_a_step_at_the_hbm_roofline():
    s = serving("mixtral-8x7b", parallel={"tp": 2, "etp": 2}, batch_size=16)
    r = simulate(s)
    assert r.experts_touched_per_layer == pytest.approx(8 * (1 - 0.75**16))
    tb = r.time_breakdown_s
    # decode at batch 16 touches ~all experts: the compute part is the read of every weight
    # (tp 2, bf16) and the KV cache of 16 sequences at the mean context, near HBM speed
    m, hbm = s.model, s.cluster.gpu.hbm_TBps * 1e12
    weights = ReplicaCost(s).counts.total * 2 / 2
    ctx = 512 + 64 / 2
    kv = kv_cache_bytes_per_token(m, s.parallel, s.precision) * 16 * ctx
    assert (weights + kv) / hbm < tb["compute"] < 1.5 * (weights + kv) / hbm
    # TP: two all-reduces per layer of the (16, d) bf16 activations
    c = ReplicaCost(s)
    ar = c.ctx.all_reduce_s(c.tp_group, 16 * m.d_model * 2)
    assert tb["tp_comm"] == pytest.approx(2 * m.n_layers * ar)
    assert tb["tp_comm"] > 0 and tb["all_to_all"] == 0  # tp 2, ep 1
    ep = simulate(serving("mixtral-8x7b", parallel={"tp": 1, "ep": 8}, batch_size=16))
    assert ep.time_breakdown_s["all_to_all"] > 0 and ep.time_breakdown_s["tp_comm"] == 0


def test_model_flops_per_token_is_one_forward_of_a_generated_token():
    """2 FLOPs per weight a generated token multiplies (not the embedding lookup) plus attention
    over the mean context it sees: prompt_len + (output_len - 1)/2 keys. Not 3x (training)."""
    s = serving("llama-2-13b", gpus_per_node=1, prompt_len=512, output_len=64)
    r = simulate(s)
    m = s.model
    ctx = 512 + (64 - 1) / 2
    expected = 2 * (r.params_active - m.vocab_size * m.d_model)
    expected += m.n_layers * attention_core_flops(m, ctx)
    # norm weights are counted as 2 FLOPs each above but are no GEMM: a 1e-4 difference
    assert r.model_flops_per_token == pytest.approx(expected, rel=1e-3)
    assert 1.9 * r.params_active < r.model_flops_per_token < 2.2 * r.params_active
    moe = simulate(serving("mixtral-8x7b", parallel={"tp": 2, "etp": 2}))
    assert 1.9 * moe.params_active < moe.model_flops_per_token < 2.2 * moe.params_active


def test_kv_capacity_limits_concurrency_under_load():
    s = serving(
        "llama-2-13b",
        gpus_per_node=1,
        prompt_len=2048,
        output_len=256,
        arrival_rate_per_s=50.0,
        duration_s=20.0,
        max_batch_size=256,
        scheduler="prefill_first",
    )
    r = simulate(s)
    # MHA 13B: 0.82 MB of KV per token; ~50 GB free → a few dozen sequences, not 256
    assert r.kv_capacity_sequences < 256
    assert r.concurrency_limit == r.kv_capacity_sequences
    assert r.mean_decode_batch <= r.kv_capacity_sequences
    assert r.fits_in_memory
    # overloaded: the queue grows, so p99 TTFT is far above the prefill
    assert r.ttft_s_p99 > 10 * ReplicaCost(s).prefill(1, 2048).total_s


def test_low_load_throughput_is_the_offered_load():
    s = serving(
        "llama-3-8b", gpus_per_node=1, arrival_rate_per_s=2.0, duration_s=200.0, output_len=32
    )
    r = simulate(s)
    assert r.output_tokens_per_s == pytest.approx(2.0 * 32, rel=0.1)
    assert r.ttft_s_p50 < 2 * ReplicaCost(s).prefill(1, 512).total_s


def test_expert_offload_moves_weights_to_host_and_costs_pcie_time():
    base = serving("mixtral-8x7b", parallel={"tp": 2, "etp": 2}, batch_size=4)
    off = scenario_from_dict(
        {**as_dict(base), "workload": {**as_dict(base)["workload"], "expert_offload": True}}
    )
    a, b = simulate(base), simulate(off)
    assert b.memory_per_gpu_GB["weights"] < 0.25 * a.memory_per_gpu_GB["weights"]
    assert b.time_breakdown_s["expert_offload"] > 0 and a.time_breakdown_s["expert_offload"] == 0
    c = ReplicaCost(off)
    step = c.decode(4, 4 * 600)
    assert step.offload_s == pytest.approx(step.expert_bytes_read / (64e9))
    assert b.tpot_s_p50 > 5 * a.tpot_s_p50  # PCIe is ~50× slower than HBM


def test_fp8_weights_halve_weight_memory():
    base = serving("llama-2-70b", parallel={"tp": 4})
    fp8 = scenario_from_dict({**as_dict(base), "precision": {"weights_inference": "fp8"}})
    a, b = simulate(base), simulate(fp8)
    assert b.memory_per_gpu_GB["weights"] == pytest.approx(a.memory_per_gpu_GB["weights"] / 2)
    assert b.tpot_s_p50 < 0.75 * a.tpot_s_p50


def test_seeded_serving_is_bit_identical_and_seed_matters():
    s = serving("tiny-moe", gpus_per_node=1, arrival_rate_per_s=200.0, duration_s=2.0)
    a, b = simulate(s).to_json_dict(), simulate(s).to_json_dict()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    other = scenario_from_dict({**as_dict(s), "workload": {**as_dict(s)["workload"], "seed": 1}})
    assert simulate(other).ttft_s_p99 != a["ttft_s_p99"]


def test_trace_has_prefill_and_decode_steps(tmp_path):
    path = tmp_path / "t.json"
    simulate(serving("tiny-dense", gpus_per_node=1, batch_size=2, output_len=4), trace_path=path)
    names = [e["name"] for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X"]
    assert names == ["prefill", "decode", "decode", "decode"]


SERVING = sorted((Path(__file__).parents[2] / "scenarios" / "serving").glob("*.yaml"))


@pytest.mark.parametrize("path", SERVING, ids=[p.stem for p in SERVING])
def test_serving_scenario_files_validate_and_simulate(path):
    data, _ = load_yaml(path)
    if "base" in data:  # a sweep: every point must build and simulate
        rows = run_sweep(load_sweep(path), workers=1)
        assert "error" not in rows or rows["error"].isna().all()
        assert (rows["output_tokens_per_s"] > 0).all()
        return
    r = simulate(load_scenario(path), base_dir=path.parent)
    assert r.output_tokens_per_s > 0 and r.tpot_s_p50 > 0 and r.fits_in_memory


def test_poisson_serving_where_no_request_arrives_says_so():
    """It exited 0 with no TTFT/TPOT and no word."""
    path = Path(__file__).parents[2] / "scenarios" / "serving" / "mixtral-8x7b-poisson-8xh100.yaml"
    data, _ = load_yaml(path)
    data["workload"] = {**data["workload"], "arrival_rate_per_s": 0.001, "duration_s": 1.0}
    r = simulate(scenario_from_dict(data)).to_json_dict()
    assert r["requests"] == 0 and "ttft_s_p50" not in r
    assert "no request arrived" in r["note"] and "arrival_rate_per_s" in r["note"]


def test_prefix_hits_never_add_prefill_work():
    """More of each prompt found cached: never more prefill tokens run, and a cached prefix's
    chunk (offset c, the rest) never costs more than the whole prompt."""
    c = ReplicaCost(serving("llama-3-8b", gpus_per_node=1, prompt_len=2048))
    whole = c.prefill_chunks([(0, 2048)], 1).total_s
    rest = [c.prefill_chunks([(k, 2048 - k)], 1).total_s for k in (256, 1024, 2000)]
    assert whole >= rest[0] >= rest[1] >= rest[2]
    runs = [
        simulate(
            serving(
                "llama-3-8b",
                gpus_per_node=1,
                prompt_len=1024,
                output_len=16,
                arrival_rate_per_s=20.0,
                duration_s=5.0,
                prefix_hit_rate=h,
            )
        )
        for h in (0.0, 0.3, 0.7)
    ]
    tokens = [r.prefill_tokens_computed for r in runs]
    assert tokens[0] == runs[0].requests * 1024
    assert tokens[0] > tokens[1] > tokens[2]
    ttft = [r.ttft_s_mean for r in runs]
    assert ttft == sorted(ttft, reverse=True)


def test_mbu_and_goodput():
    """MBU is a fraction of the HBM peak; goodput counts the requests meeting both targets:
    all of them under loose targets (the offered rate), none under impossible ones."""
    wl = {"arrival_rate_per_s": 20.0, "duration_s": 5.0}
    loose = simulate(
        serving("llama-3-8b", gpus_per_node=1, slo={"ttft_s": 10.0, "tpot_s": 1.0}, **wl)
    )
    tight = simulate(serving("llama-3-8b", gpus_per_node=1, slo={"ttft_s": 1e-6}, **wl))
    assert 0 < loose.mbu <= 1 and 0 < loose.mfu < loose.mbu  # decode is bandwidth-bound
    assert loose.slo_attainment == 1.0
    assert loose.goodput_requests_per_s == pytest.approx(loose.requests / 5.0)
    assert tight.goodput_requests_per_s == 0.0 and tight.slo_attainment == 0.0
    assert (
        "goodput_requests_per_s"
        not in simulate(serving("llama-3-8b", gpus_per_node=1, **wl)).to_json_dict()
    )
