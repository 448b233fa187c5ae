"""Prefill/decode disaggregation end to end: TTFT holds the KV transfer (a slower network
never lowers it), the result shows both pools, the slower pool limits the throughput."""

from __future__ import annotations

import pytest
from serving_scale_scenarios import serving

from moesim.sim.run import simulate


def pd(nic_Gbps: float = 400.0, rate: float = 4.0, prefill: dict | None = None, **kw):
    return serving(
        "mixtral-8x7b",
        nodes=2,
        cluster={"inter_node": {"nics_per_node": 8, "nic_Gbps": nic_Gbps, "latency_us": 5}},
        arrival_rate_per_s=rate,
        duration_s=8.0,
        prompt_len=1024,
        output_len=32,
        disaggregated={
            "prefill": prefill or {"nodes": 1, "tp": 2, "etp": 2},
            "decode": {"nodes": 1, "tp": 2, "etp": 2},
        },
        **kw,
    )


def test_ttft_holds_the_transfer_and_a_slower_network_never_lowers_it():
    fast, slow = simulate(pd(400.0)), simulate(pd(1.0))
    d = fast.disaggregated
    assert d["kv_link"] == "network"
    parts = d["ttft_parts_s_mean"]
    assert parts["kv_transfer"] >= d["kv_transfer_s"] - 1e-12
    assert fast.ttft_s_mean == pytest.approx(sum(parts.values()))
    assert slow.disaggregated["kv_transfer_s"] > 100 * d["kv_transfer_s"]
    for key in ("ttft_s_p50", "ttft_s_p99", "ttft_s_mean"):
        assert getattr(slow, key) >= getattr(fast, key)
    assert slow.ttft_s_mean - fast.ttft_s_mean >= 0.9 * (
        slow.disaggregated["kv_transfer_s"] - d["kv_transfer_s"]
    )


def test_result_shows_both_pools():
    r = simulate(pd())
    for which in ("prefill", "decode"):
        pool = r.disaggregated[which]
        assert pool["gpus"] == 8 and pool["replicas"] == 4
        assert 0.0 < pool["utilization"] <= 1.0
        assert pool["capacity_requests_per_s"] > 0
        assert pool["fits_in_memory"]
    assert r.gpus == 16 and r.output_tokens_per_s > 0
    assert r.disaggregated["bottleneck"] in ("prefill", "decode")


def test_the_slower_pool_limits_the_throughput():
    # long prompts on one TP-8 prefill replica, 60 requests/s: prefill cannot keep up, so the
    # decode pool starves and delivers at most what prefill lets through
    s = serving(
        "mixtral-8x7b",
        nodes=2,
        arrival_rate_per_s=60.0,
        duration_s=8.0,
        prompt_len=4096,
        output_len=32,
        disaggregated={
            "prefill": {"gpus": 8, "tp": 8, "etp": 8},
            "decode": {"gpus": 8, "tp": 2, "etp": 2},
        },
    )
    r = simulate(s)
    d = r.disaggregated
    assert d["bottleneck"] == "prefill"
    assert d["prefill"]["capacity_requests_per_s"] < 60.0
    delivered_rps = r.output_tokens_per_s / 32
    assert delivered_rps <= d["prefill"]["capacity_requests_per_s"] * 1.05
    assert d["prefill"]["utilization"] > 0.95


def test_per_request_lengths_set_each_transfer():
    from moesim.sim.kv_transfer import prompt_kv_bytes

    s = pd(rate=6.0)
    lengths = {"distribution": "uniform", "min": 256, "max": 2048}
    varied = serving(
        "mixtral-8x7b",
        nodes=2,
        arrival_rate_per_s=6.0,
        duration_s=8.0,
        prompt_len=lengths,
        output_len={"distribution": "uniform", "min": 2, "max": 64},
        disaggregated=s.workload.disaggregated.model_dump(),
    )
    r = simulate(varied)
    per_token = prompt_kv_bytes(varied, 1)
    mean_gb = r.disaggregated["kv_transfer_GB_per_request"]
    assert 256 * per_token / 1e9 < mean_gb < 2048 * per_token / 1e9
    assert r.tpot_s_p50 > 0 and r.ttft_s_p99 >= r.ttft_s_p50


def _tight(util: float, scheduler: str = "vllm_v1"):
    # long outputs at 40 requests/s keep ~40 sequences per decode replica; the memory
    # utilization leaves KV for 204 (0.8), 51 (0.62) or 34 (0.6) whole sequences
    return serving(
        "mixtral-8x7b",
        nodes=2,
        arrival_rate_per_s=40.0,
        duration_s=8.0,
        prompt_len=1024,
        output_len=512,
        gpu_memory_utilization=util,
        scheduler=scheduler,
        disaggregated={
            "prefill": {"gpus": 8, "tp": 2, "etp": 2},
            "decode": {"gpus": 8, "tp": 2, "etp": 2},
        },
    )


def test_the_pools_are_paged_and_the_decode_pool_preempts_when_its_kv_runs_out():
    roomy = simulate(_tight(0.8))
    d = roomy.disaggregated
    assert d["prefill"]["scheduler"] == d["decode"]["scheduler"] == "vllm_v1"
    assert roomy.preemptions == 0
    # a paged pool holds what its requests have computed, never more than the pool that whole
    # sequences per slot reserve
    whole = simulate(_tight(0.8, "prefill_first")).disaggregated["decode"]
    held_GB = d["decode"]["memory_per_gpu_GB"]["kv_cache"]
    assert 0 < held_GB <= whole["memory_per_gpu_GB"]["kv_cache"]
    assert d["prefill"]["memory_per_gpu_GB"]["kv_cache"] < held_GB  # prompts leave when done
    tight = simulate(_tight(0.6))
    assert tight.preemptions > 0
    assert tight.disaggregated["decode"]["preemptions_per_replica"] > 0
    assert tight.disaggregated["decode"]["fits_in_memory"]


def test_paging_serves_more_than_whole_sequence_slots_in_the_same_memory():
    paged, whole = simulate(_tight(0.6)), simulate(_tight(0.6, "prefill_first"))
    assert whole.disaggregated["decode"]["scheduler"] == "prefill_first"
    assert whole.preemptions == 0
    assert paged.mean_decode_batch >= whole.mean_decode_batch
    assert paged.output_tokens_per_s >= whole.output_tokens_per_s
    assert paged.ttft_s_p99 <= whole.ttft_s_p99


def _speculative(acceptance: float, scheduler: str = "vllm_v1"):
    spec = {"method": "draft", "draft_model": "mistral-7b", "num_speculative_tokens": 2,
            "acceptance_rate": acceptance}  # fmt: skip
    return pd(speculative=spec, scheduler=scheduler)


def test_a_speculative_decode_pool_runs_the_paged_engine_and_draws_its_acceptances():
    none, most = simulate(_speculative(0.0)), simulate(_speculative(0.9))
    for r in (none, most):
        assert r.disaggregated["decode"]["scheduler"] == "vllm_v1"
        sp = r.speculative
        assert sp["draft_tokens"] > 0 and sp["drafter_weights_GB"] > 0
        # the pool holds the drafter's KV beside the target's
        assert sp["kv_bytes_per_token"] > sp["drafter_kv_bytes_per_token"] > 0
    assert none.speculative["accepted_tokens"] == 0
    assert none.speculative["tokens_per_verify_step"] == 1.0
    assert 0.8 < most.speculative["draft_acceptance_rate"] < 1.0
    assert most.tpot_s_mean < none.tpot_s_mean  # ~2.6 tokens a verify against 1
    # acceptance 0: a request's first token comes from prefill, its first decode here is
    # plain (no drafts yet), and each of its other 30 tokens takes a verify of k = 2 drafts
    assert none.preemptions == 0
    timed = none.requests // none.disaggregated["decode"]["replicas"]  # on decode replica 0
    assert none.speculative["draft_tokens"] == 2 * 30 * timed
    # the same requests under prefill_first keep whole-sequence slots and expected tokens
    whole = simulate(_speculative(0.9, "prefill_first"))
    assert whole.disaggregated["decode"]["scheduler"] == "prefill_first"
    assert "draft_tokens" not in whole.speculative
