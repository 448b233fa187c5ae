"""Post-training in the simulator: the model copies each stage holds, the phases of a step, LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.analytic.layout import pipeline_layout
from moesim.analytic.memory import memory_per_gpu, model_state_bytes, stage_params
from moesim.analytic.params import count_params
from moesim.analytic.post_training import post_training_memory
from moesim.scenario_io import load_scenario, scenario_from_dict
from moesim.sim.profile import resolve_profile
from moesim.sim.rl_phases import gae_phase
from moesim.sim.run import build_context, simulate


def scenario(workload: dict, model: str = "llama-3-8b", nodes: int = 1, **kw):
    d = {
        "name": f"{model}-{workload['stage']}",
        "model": model,
        "cluster": {"gpu": "h100-sxm", "nodes": nodes},
        "parallel": kw.pop("parallel", {"tp": 1, "pp": 1, "zero_stage": 1}),
        "workload": workload,
        **kw,
    }
    return scenario_from_dict(d)


DPO = {"stage": "dpo", "seq_len": 1024, "global_batch": 16}
GRPO = {"stage": "grpo", "global_batch": 8, "group_size": 4, "prompt_len": 256, "response_len": 256}
PPO = {"stage": "ppo", "global_batch": 16, "prompt_len": 256, "response_len": 256}


# -- memory: the copies each stage holds ------------------------------------------------------
def test_dpo_holds_a_frozen_reference_copy_of_the_weights():
    live = scenario(DPO)
    pre = scenario({**DPO, "reference": "precomputed"})
    a, b = post_training_memory(live), post_training_memory(pre)
    # tp = pp = ep = 1, ZeRO-1: the reference is the whole model in bf16 on every GPU
    ref = count_params(live.model).total * 2.0
    assert a.estimate.weights - b.estimate.weights == pytest.approx(ref)
    assert a.estimate.gradients == b.estimate.gradients
    assert a.estimate.optimizer == b.estimate.optimizer
    policy = b.copies_GB()["policy"]
    assert a.copies_GB() == pytest.approx({"policy": policy, "reference": ref / 1e9})
    # the policy part is exactly the pretraining accounting of the same step
    base = memory_per_gpu(pre)
    assert b.estimate.total == pytest.approx(base.total)


def test_reference_copy_is_sharded_like_the_policy_weights():
    s = scenario(
        {**DPO, "global_batch": 32},
        model="qwen3-30b-a3b",
        nodes=2,
        parallel={"tp": 2, "pp": 2, "ep": 4, "zero_stage": 3},
    )
    mem = post_training_memory(s)
    st = s.parallel
    stage = pipeline_layout(s.model, st.pp, st.virtual_stages)[mem.estimate.stage]
    frozen = model_state_bytes(stage_params(s.model, st, stage), st, s.precision, False)[0]
    assert mem.copies_GB()["reference"] == pytest.approx(frozen / 1e9)
    assert mem.copies_GB()["reference"] < 0.1 * count_params(s.model).total * 2 / 1e9


def test_ppo_holds_four_models_two_of_them_training():
    s = scenario({**PPO, "rollout": "disaggregated"})
    mem = post_training_memory(s)
    assert set(mem.copies_GB()) == {"policy", "reference", "reward", "critic"}
    one = count_params(s.model).total * 2.0  # same architecture for all four by default
    assert mem.estimate.weights == pytest.approx(4 * one)
    # colocated, the inference engine holds a fifth copy of the weights (vLLM's own)
    co = post_training_memory(scenario(PPO))
    assert co.copies_GB()["rollout_engine"] == pytest.approx(one / 1e9)
    assert co.estimate.weights == pytest.approx(5 * one)
    s = scenario(PPO)
    policy_only = memory_per_gpu(s)
    assert mem.estimate.optimizer == pytest.approx(2 * policy_only.optimizer)
    assert mem.estimate.gradients == pytest.approx(2 * policy_only.gradients)
    r = simulate(s)
    assert {"policy", "reference", "reward", "critic"} <= set(r.memory_per_model_GB)
    for phase in ("rollout", "reward", "old_logprobs", "reference", "values", "gae"):
        assert phase in r.time_breakdown_s
    assert r.time_breakdown_s["critic_training"] > 0


def test_grpo_without_kl_needs_no_reference_and_rule_reward_is_free():
    with_kl, no_kl = scenario(GRPO), scenario({**GRPO, "kl_coef": 0.0})
    a, b = simulate(with_kl), simulate(no_kl)
    assert "reference" in a.memory_per_model_GB and "reference" not in b.memory_per_model_GB
    assert a.memory_per_model_GB["rollout_engine"] > 0  # colocated: the engine's weights
    assert a.time_breakdown_s["reference"] > 0 and "reference" not in b.time_breakdown_s
    assert a.time_breakdown_s["reward"] == 0.0
    rm = scenario({**GRPO, "reward": "model", "reward_model": "llama-3-8b"})
    r = simulate(rm)
    assert r.time_breakdown_s["reward"] == pytest.approx(a.time_breakdown_s["reference"])
    assert "reward" in r.memory_per_model_GB


def test_lora_optimizer_and_gradient_memory_scale_with_rank():
    def mem(rank: int):
        lora = {"rank": rank, "targets": ["attention", "mlp"]}
        return post_training_memory(
            scenario({"stage": "sft", "seq_len": 2048, "global_batch": 8, "lora": lora})
        ).estimate

    m8, m16, m64 = mem(8), mem(16), mem(64)
    assert m16.optimizer == pytest.approx(2 * m8.optimizer)
    assert m64.optimizer == pytest.approx(8 * m8.optimizer)
    assert m64.gradients == pytest.approx(8 * m8.gradients)
    # ZeRO-1 over 8 GPUs: 41.9M adapters × 12 B of Adam state / 8 at rank 16
    assert m16.optimizer == pytest.approx(41_943_040 * 12 / 8)
    full = memory_per_gpu(scenario({"stage": "sft", "seq_len": 2048, "global_batch": 8}))
    assert m16.optimizer < 0.01 * full.optimizer


def test_lora_has_no_reference_copy_but_still_runs_the_reference_forward():
    s = scenario({**DPO, "lora": {"rank": 16, "targets": ["attention"]}})
    r = simulate(s)
    assert set(r.memory_per_model_GB) == {"policy"}
    assert r.time_breakdown_s["reference"] > 0
    assert r.trainable_params == 32 * 16 * (2 * 8192 + 2 * 5120)


# -- time: the phases of a step ------------------------------------------------------------------
def test_phases_are_the_passes_they_claim_to_be():
    """Each phase against the same work simulated another way: DPO's training is SFT on both
    sides of every pair (a microbatch holds the pair), GRPO's training is SFT on prompts × group
    sequences of prompt + response, its rollout is a static-batch serving run, and PPO's
    forward-only phases over the same sequences on the same architecture take the same time."""
    sft = {"stage": "sft", "seq_len": 1024, "global_batch": 2 * DPO["global_batch"]}
    dpo = simulate(scenario(DPO))
    mb2 = {"tp": 1, "pp": 1, "zero_stage": 1, "microbatch_size": 2}
    pair = simulate(scenario(sft, parallel=mb2))
    assert dpo.time_breakdown_s["training"] == pytest.approx(pair.step_time_s)
    grpo = simulate(scenario(GRPO))
    n = GRPO["global_batch"] * GRPO["group_size"]
    seq = GRPO["prompt_len"] + GRPO["response_len"]
    train = simulate(scenario({"stage": "sft", "seq_len": seq, "global_batch": n}))
    assert grpo.time_breakdown_s["training"] == pytest.approx(train.step_time_s)
    serve = {"stage": "inference", "prompt_len": 256, "output_len": 256, "batch_size": n // 8}
    engine = simulate(scenario(serve, parallel={"tp": 1, "zero_stage": 0, "recompute": "none"}))
    assert grpo.rollout_concurrency == n // 8  # the KV pool holds all: one wave
    assert grpo.time_breakdown_s["rollout"] == pytest.approx(engine.makespan_s)
    ppo = simulate(scenario(PPO)).time_breakdown_s
    assert ppo["old_logprobs"] == pytest.approx(ppo["reference"])
    assert ppo["values"] == pytest.approx(ppo["reference"])  # critic: the policy's architecture
    assert ppo["critic_training"] == pytest.approx(ppo["training"])
    for wl in (DPO, GRPO, PPO, {"stage": "sft", "seq_len": 2048, "global_batch": 8}):
        r = simulate(scenario(wl))
        tb = r.time_breakdown_s
        assert tb["compute"] + tb["exposed_comm"] + tb["bubble"] + tb["imbalance"] == pytest.approx(
            r.step_time_s
        )


def test_gae_is_a_memory_bound_scan_of_the_rollouts():
    """GAE reads rewards and values and writes advantages and returns (fp32) for every response
    token of the GPU's sequences: launch-bound when small, then those bytes at the profile's
    memory-bound efficiency, and split over data-parallel ranks."""

    def gae(nodes: int = 1, **kw):
        s = scenario({**PPO, "rollout": "disaggregated", **kw}, nodes=nodes)
        ctx = build_context(s, None, None)
        return gae_phase(s, ctx).time_s, ctx.cm

    small, cm = gae()
    launch = cm.launch_s
    assert launch <= small < launch + 1e-6  # 2 sequences x 256 tokens x 16 B per GPU: 8 kB
    big, _ = gae(global_batch=4096, response_len=2048)
    nbytes = 4 * 4.0 * 4096 / 8 * 2048  # 4 fp32 arrays, 512 sequences per GPU: 17 MB
    eff = cm.profile.compute["memory_bound"](nbytes)
    assert big == pytest.approx(nbytes / (cm.hbm_bytes_per_s * eff) + launch)
    assert big - launch > nbytes / cm.hbm_bytes_per_s  # never above the HBM peak
    # twice the tokens: twice the bytes, at an efficiency that can only rise (<= 2x the time)
    double, _ = gae(global_batch=4096, response_len=4096)
    assert 1.6 < (double - launch) / (big - launch) <= 2.0
    two_nodes, _ = gae(nodes=2, global_batch=4096, response_len=4096)
    assert two_nodes == pytest.approx(big)  # half the sequences per GPU


def test_dpo_reference_is_a_forward_of_the_pairs():
    r = simulate(scenario(DPO))
    pre = simulate(scenario({**DPO, "reference": "precomputed"}))
    tb = r.time_breakdown_s
    # a forward is about a third of forward + backward (+ recompute and optimizer)
    assert 0.2 < tb["reference"] / tb["training"] < 0.4
    assert pre.step_time_s == pytest.approx(tb["training"])
    assert r.tokens_per_s == pytest.approx(2 * 16 * 1024 / r.step_time_s)


def test_grpo_rollout_grows_with_group_size_and_response_length():
    def rollout(**kw) -> float:
        return simulate(scenario({**GRPO, **kw})).time_breakdown_s["rollout"]

    base = rollout()
    assert rollout(response_len=512) > 1.9 * base  # twice the decode steps, longer contexts
    g = [rollout(group_size=n) for n in (4, 16, 64)]
    assert g == sorted(g) and g[-1] > g[0]


def test_colocated_rollout_runs_in_waves_when_the_kv_pool_is_small():
    # Llama-2-13B (MHA: 0.8 MB of KV per token) with full Adam states on 8 GPUs leaves little HBM
    wl = {**GRPO, "global_batch": 64, "group_size": 16, "prompt_len": 1024, "response_len": 1024}
    first = {**wl, "rollout_engine": {"scheduler": "prefill_first"}}
    s = scenario(first, model="llama-2-13b", parallel={"tp": 2, "pp": 1, "zero_stage": 3})
    r = simulate(s)
    assert r.rollout_scheduler == "prefill_first" and r.rollout_preemptions == 0
    assert r.rollout_concurrency < r.rollout_sequences_per_replica
    assert r.rollout_waves == -(-r.rollout_sequences_per_replica // r.rollout_concurrency)
    assert r.memory_per_gpu_GB["total"] <= s.cluster.gpu.hbm_GB
    # vLLM V1 admits every sequence (max_num_seqs 1024), pages the same pool and preempts
    v1 = simulate(scenario(wl, model="llama-2-13b", parallel={"tp": 2, "pp": 1, "zero_stage": 3}))
    assert v1.rollout_scheduler == "vllm_v1"
    assert v1.rollout_concurrency == v1.rollout_sequences_per_replica
    assert v1.rollout_kv_pool_tokens == r.rollout_kv_pool_tokens
    assert v1.rollout_peak_kv_tokens <= v1.rollout_kv_pool_tokens
    assert v1.rollout_preemptions > 0
    assert v1.memory_per_gpu_GB == r.memory_per_gpu_GB  # the same pool either way


def test_disaggregated_rollout_syncs_weights_over_the_network():
    co = simulate(scenario(GRPO))
    dis = simulate(scenario({**GRPO, "rollout": "disaggregated", "rollout_gpus": 8}))
    assert dis.gpus == 16 and dis.training_gpus == 8 and dis.rollout_gpus == 8
    assert dis.time_breakdown_s["weight_sync"] > co.time_breakdown_s["weight_sync"]
    # bf16 weights of one 8B model over one 400 Gb/s NIC per GPU (tp = 1: the whole model)
    nbytes = count_params(scenario(GRPO).model).total * 2
    net = resolve_profile(None, "h100-sxm").links.network.value  # the achieved NIC fraction
    assert dis.time_breakdown_s["weight_sync"] == pytest.approx(nbytes / (50e9 * net), rel=0.01)
    assert dis.memory_per_gpu_GB["kv_cache"] == 0 and dis.rollout_memory_per_gpu_GB["kv_cache"] > 0


def test_disaggregated_rollout_gpus_that_do_not_fit_make_the_step_not_fit():
    """Llama-3-70B: training (ZeRO-3 over 32 GPUs) fits, but a tp-1 rollout GPU would hold all
    141 GB of bf16 weights: the step does not fit, the parts say which, no KV slot is made up."""
    wl = {**GRPO, "rollout": "disaggregated", "rollout_gpus": 8}
    z3 = {"tp": 1, "zero_stage": 3}
    r = simulate(scenario(wl, model="llama-3-70b", nodes=4, parallel=z3))
    assert r.fits_in_memory is False
    assert r.fits_in_memory_parts == {"training": True, "rollout": False}
    assert r.rollout_fits_in_memory is False
    assert r.rollout_kv_capacity_sequences == 0
    assert "rollout GPUs" in r.memory_note and "no sequence" in r.memory_note
    # with tp 8 on the rollout GPUs the weights fit and so does the step
    wl8 = {**wl, "rollout_parallel": {"tp": 8}}
    ok = simulate(scenario(wl8, model="llama-3-70b", nodes=4, parallel=z3))
    assert ok.fits_in_memory and ok.fits_in_memory_parts == {"training": True, "rollout": True}
    assert ok.rollout_kv_capacity_sequences == ok.rollout_sequences_per_replica == 32


def test_colocated_rollout_with_no_room_for_kv_is_reported():
    s = scenario(GRPO, model="llama-3-70b", nodes=4, parallel={"tp": 1, "zero_stage": 3})
    r = simulate(s)
    assert r.fits_in_memory is False and r.rollout_kv_capacity_sequences == 0
    assert "KV cache" in r.memory_note


def test_rollout_layout_folds_context_parallel_into_replicas():
    """Training with cp 2: decode does not split sequences, so the rollout engine runs dp =
    GPUs / (tp·pp) replicas — the same rollout as training without cp."""
    cp2 = {"tp": 1, "cp": 2, "zero_stage": 1}
    for rollout in ({"rollout": "disaggregated", "rollout_gpus": 8}, {}):
        r = simulate(scenario({**GRPO, **rollout}, parallel=cp2))
        assert r.rollout_parallel == {"tp": 1, "pp": 1, "ep": 1, "etp": 1, "dp": 8}
    dis = {**GRPO, "rollout": "disaggregated", "rollout_gpus": 8}
    a = simulate(scenario(dis, parallel=cp2)).time_breakdown_s["rollout"]
    b = simulate(scenario(dis)).time_breakdown_s["rollout"]
    assert a == pytest.approx(b)
    with pytest.raises(ValueError, match=r"workload.rollout_parallel: .*tp·pp = 3·1"):
        simulate(scenario({**dis, "rollout_parallel": {"tp": 3}}))


def test_colocated_resharding_changes_the_rollout_and_costs_an_nvlink_gather():
    """Training tp 4, rollouts tp 1 (eight replicas instead of two): each GPU must gather the
    three quarters of the weights it does not hold, over NVLink, and the engine holds a whole
    copy. A finer rollout (tp 8 from tp 4) keeps a slice of what it holds: nothing moves."""
    tp4 = {"tp": 4, "pp": 1, "zero_stage": 1}
    s = scenario(GRPO, parallel=tp4)
    same = simulate(s)
    tp1 = simulate(scenario({**GRPO, "rollout_parallel": {"tp": 1}}, parallel=tp4))
    assert same.weight_sync_GB_per_gpu == 0 and same.weight_sync_parts_s["reshard"] == 0
    n = count_params(s.model).total
    assert tp1.weight_sync_GB_per_gpu == pytest.approx(0.75 * n * 2 / 1e9)
    link = build_context(s, None, None).cm.link_fraction("nvlink")
    nvlink_Bps = s.cluster.intra.bandwidth_GBps * 1e9 * link
    assert tp1.weight_sync_parts_s["reshard"] == pytest.approx(0.75 * n * 2 / nvlink_Bps, rel=1e-3)
    assert tp1.time_breakdown_s["weight_sync"] > same.time_breakdown_s["weight_sync"] + 0.01
    engine_gb = tp1.memory_per_model_GB["rollout_engine"]
    assert engine_gb == pytest.approx(4 * same.memory_per_model_GB["rollout_engine"])
    # the rollout is the serving engine on the new layout: eight tp-1 replicas of 4 sequences
    serve = {"stage": "inference", "prompt_len": 256, "output_len": 256, "batch_size": 4}
    engine = simulate(scenario(serve, parallel={"tp": 1, "zero_stage": 0, "recompute": "none"}))
    assert tp1.rollout_parallel["dp"] == 8
    assert tp1.time_breakdown_s["rollout"] == pytest.approx(engine.makespan_s)
    assert tp1.time_breakdown_s["rollout"] != pytest.approx(same.time_breakdown_s["rollout"])
    tp8 = simulate(scenario({**GRPO, "rollout_parallel": {"tp": 8}}, parallel=tp4))
    assert tp8.weight_sync_GB_per_gpu == 0


def test_fp8_rollout_weights_halve_the_sync_and_add_a_quantization_pass():
    tp4 = {"tp": 4, "pp": 1, "zero_stage": 1}
    fp8 = {"weights_inference": "fp8"}
    dis = {**GRPO, "rollout": "disaggregated", "rollout_gpus": 8}
    for wl in ({**GRPO, "rollout_parallel": {"tp": 1}}, dis):
        bf = simulate(scenario(wl, parallel=tp4))
        q = simulate(scenario(wl, parallel=tp4, precision=fp8))
        assert q.weight_sync_GB_per_gpu == pytest.approx(bf.weight_sync_GB_per_gpu / 2)
        assert q.time_breakdown_s["weight_sync"] < 0.6 * bf.time_breakdown_s["weight_sync"]
    bf = simulate(scenario(dis, parallel=tp4)).weight_sync_parts_s
    q = simulate(scenario(dis, parallel=tp4, precision=fp8)).weight_sync_parts_s
    assert bf["quantize"] == 0 and q["quantize"] > 0
    assert q["transfer"] == pytest.approx(bf["transfer"] / 2, rel=0.01)


def test_sft_is_pretraining_with_packing_and_masking():
    sft = {"stage": "sft", "seq_len": 2048, "global_batch": 16}
    pre = simulate(scenario({**sft, "stage": "pretrain"}))
    a = simulate(scenario(sft))
    assert a.step_time_s == pytest.approx(pre.step_time_s)
    assert a.tokens_per_s == pytest.approx(pre.tokens_per_s)
    b = simulate(scenario({**sft, "packing_efficiency": 0.5, "prompt_fraction": 0.25}))
    assert b.step_time_s == pytest.approx(a.step_time_s)  # padding still costs compute
    assert b.tokens_per_s == pytest.approx(0.5 * a.tokens_per_s)
    assert b.loss_tokens_per_s == pytest.approx(0.75 * b.tokens_per_s)


def test_lora_step_is_cheaper_and_reduces_only_adapter_gradients():
    sft = {"stage": "sft", "seq_len": 2048, "global_batch": 16}
    full = simulate(scenario(sft))
    lora = simulate(scenario({**sft, "lora": {"rank": 16, "targets": ["attention", "mlp"]}}))
    assert lora.step_time_s < 0.85 * full.step_time_s
    assert lora.time_breakdown_s["dp_comm"] < 0.01 * full.time_breakdown_s["dp_comm"]
    # LoRA model FLOPs: 2·F + 3·F_adapters per token
    assert lora.model_flops_per_token < 0.7 * full.model_flops_per_token


def test_moe_lora_per_expert_adapters_cost_more_than_shared():
    def step(targets):
        lora = {"rank": 64, "targets": targets}
        wl = {"stage": "sft", "seq_len": 2048, "global_batch": 16, "lora": lora}
        return simulate(scenario(wl, model="qwen3-30b-a3b", parallel={"tp": 1, "ep": 8}))

    shared, per = step(["experts_shared"]), step(["experts_per_expert"])
    assert per.trainable_params == 128 * shared.trainable_params
    assert per.memory_per_gpu_GB["optimizer"] > shared.memory_per_gpu_GB["optimizer"]


def test_post_training_trace_concatenates_the_phases(tmp_path):
    path = tmp_path / "t.json"
    simulate(scenario(DPO), trace_path=path)
    events = [e for e in json.loads(path.read_text())["traceEvents"] if e["ph"] == "X"]
    names = {e["name"].split(":")[0] for e in events}
    assert names == {"reference", "training"}
    ref_end = max(e["ts"] + e["dur"] for e in events if e["name"].startswith("reference"))
    train_start = min(e["ts"] for e in events if e["name"].startswith("training"))
    assert train_start >= ref_end - 1e-6


POST_TRAINING = sorted((Path(__file__).parents[2] / "scenarios" / "post-training").glob("*.yaml"))


@pytest.mark.parametrize("path", POST_TRAINING, ids=[p.stem for p in POST_TRAINING])
def test_post_training_scenario_files_validate_and_simulate(path):
    r = simulate(load_scenario(path), base_dir=path.parent)
    assert r.step_time_s > 0 and r.fits_in_memory, r.memory_per_gpu_GB


def test_faults_slow_the_training_phases_and_the_rollout_runs_healthy():
    """A slow GPU stretches the pipeline passes (training, reference); the rollout's serving
    engine is built without the faults (a serving scenario refuses them) and keeps its time;
    reliability adds goodput to the post-training result."""
    rel = {"gpu_mtbf_hours": 1000, "checkpoint_write_s": 30, "restart_s": 600}
    healthy = simulate(scenario(GRPO, reliability=rel)).time_breakdown_s
    slow_r = simulate(scenario(GRPO, reliability=rel,
                               faults=[{"kind": "slow_gpu", "rank": 0, "factor": 2}]))  # fmt: skip
    slow = slow_r.time_breakdown_s
    assert slow["rollout"] == healthy["rollout"]
    assert slow["training"] > 1.5 * healthy["training"]
    assert 0 < slow_r.goodput < 1
