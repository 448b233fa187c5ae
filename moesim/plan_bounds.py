"""Lower bounds on a candidate's step time and TPOT, from its FLOPs, bytes and the profile's best
efficiencies: ``moesim.plan`` prunes with them before it simulates (a bound is never above what
the simulator would say, so no layout that could win is dropped)."""

from __future__ import annotations

from moesim.analytic.flops import token_flops
from moesim.analytic.memory import memory_per_gpu
from moesim.analytic.microbatches import effective_schedule, n_microbatches, sequences_per_step
from moesim.analytic.params import count_params
from moesim.specs import (
    BYTES_PER_ELEMENT,
    DPOWorkload,
    InferenceWorkload,
    PretrainWorkload,
    Scenario,
    SFTWorkload,
)


def _profile_of(s: Scenario):
    from moesim.sim.profile import resolve_profile

    return resolve_profile(s.simulation.profile, s.cluster.gpu.name)  # as the simulator does


def best_compute_efficiency(s: Scenario) -> float:
    """The highest efficiency any compute curve of the scenario's profile reaches: no op of the
    simulation runs its FLOPs faster than peak × this (curves are flat beyond their ends)."""
    prof = _profile_of(s)
    return max(e for c in ("gemm", "grouped_gemm", "attention") for _, e in prof.compute[c].points)


def best_hbm_efficiency(s: Scenario) -> float:
    """The highest HBM efficiency of the profile: the bytes of a GEMM move no faster."""
    return max(e for _, e in _profile_of(s).hbm.points)


def training_flops_lower_bound(s: Scenario) -> float | None:
    """FLOPs one training step executes at the least, over all GPUs (see the module docstring);
    None for stages without a bound (RL, serving, one MoE layer)."""
    w, p, m = s.workload, s.parallel, s.model
    if not isinstance(w, PretrainWorkload | SFTWorkload | DPOWorkload):
        return None
    tf = token_flops(m, w.seq_len)
    lora = getattr(w, "lora", None) is not None
    passes = 2.0 if lora else 3.0  # frozen weights: no weight gradients
    per_token = passes * tf.forward + (
        0.0 if lora else tf.recompute(p.recompute, p.recompute_modules)
    )
    if m.moe is not None and m.moe.capacity_factor is not None:  # dropped copies do no work
        routed = sum(x.routed_experts for x in tf.layers)
        recomputed = p.recompute == "full" or "moe" in p.recomputed_modules
        per_token -= passes * routed + (routed if recomputed and not lora else 0.0)
    return max(per_token, 0.0) * sequences_per_step(s) * w.seq_len


def pipeline_stretch(s: Scenario) -> float:
    """Step time over per-GPU work with equal stages: (m + pp − 1)/m for 1F1B and GPipe,
    (m + (pp − 1)/v)/m interleaved, 1 for DualPipe (whose overlap the bound does not model)."""
    p = s.parallel
    m = n_microbatches(s)
    schedule = effective_schedule(p, m)  # a dualpipe whose layout does not apply runs 1F1B
    if p.pp == 1 or schedule == "dualpipe":
        return 1.0
    v = p.virtual_stages if schedule == "interleaved_1f1b" else 1
    return 1.0 + (p.pp - 1) / (m * v)


def step_time_lower_bound_s(s: Scenario) -> float:
    """A training step's time at the least (no simulation): its FLOPs at the GPU's peak × the
    profile's best efficiency, stretched by the pipeline bubble. 0 where there is no bound
    (serving layouts are ranked by GPU count alone)."""
    flops = training_flops_lower_bound(s)
    if not flops:
        return 0.0
    peak = s.cluster.gpu.peak_TFLOPS(s.precision.compute) * 1e12
    return flops / (s.gpus * peak * best_compute_efficiency(s)) * pipeline_stretch(s)


def tpot_lower_bound_s(s: Scenario) -> float | None:
    """p99 time per output token at the least: one decode step's read of the dense weights of
    a tensor-parallel shard (every stage in turn) at the best HBM efficiency. None where the
    workload is not serving or a request has a single output token (no TPOT)."""
    w, m, p = s.workload, s.model, s.parallel
    if not isinstance(w, InferenceWorkload) or w.max_output_len < 2:
        return None
    if w.disaggregated is not None:  # the decode pool's replicas decode
        from moesim.specs.scenario import pool_scenario

        return tpot_lower_bound_s(pool_scenario(s, "decode"))
    dense = sum(
        x.attention + x.dense_ffn + x.shared_experts for x in count_params(m).decoder_layers
    )
    dense += m.vocab_size * m.d_model  # the LM head, read for every step's logits
    bytes_per_gpu = dense * BYTES_PER_ELEMENT[s.precision.weights_inference] / p.tp
    step_s = bytes_per_gpu / (s.cluster.gpu.hbm_TBps * 1e12 * best_hbm_efficiency(s))
    # speculative decoding: a step (at least one weight read) yields tokens_per_step tokens
    per_step = w.speculative.tokens_per_step if w.speculative is not None else 1.0
    return step_s / per_step


def least_memory_per_gpu_B(s: Scenario) -> float:
    """Bytes per GPU the layout needs at the least: a server under Poisson arrivals shrinks
    its batch to the KV cache that fits (one sequence at the least); each pool of a
    disaggregated one its weights and workspace (a paged prefill pool holds only prompts, for
    a while); anything else needs all of it."""
    w = s.workload
    if isinstance(w, InferenceWorkload) and w.disaggregated is not None:
        from moesim.sim.serving_memory import inference_memory
        from moesim.specs.scenario import pool_scenario

        pools = (pool_scenario(s, k) for k in ("prefill", "decode"))
        return max(inference_memory(ps, 0).total for ps in pools)
    if isinstance(w, InferenceWorkload) and w.arrival_rate_per_s is not None:
        from moesim.sim.serving_memory import inference_memory

        return inference_memory(s, 1).total
    return memory_per_gpu(s).total
