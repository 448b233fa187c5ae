"""Serving memory: one GPU's weights, workspace and KV cache, how many sequences' KV cache fits
beside the rest, and why a configuration does not fit.

A speculative drafter (``workload.speculative``) adds its weights (``MemoryEstimate.drafter``)
and its KV cache per token. Its KV sits in the same paged pool as the target's: vLLM V1
registers the drafter's attention layers in the same forward context as the target's (the
proposers find them as ``get_layers_from_vllm_config(...) − target_attn_layer_names``,
vllm/v1/spec_decode/eagle.py ``load_model``), and the model runner gives every attention layer
of that context a KV-cache spec (vllm/v1/worker/gpu_model_runner.py ``get_kv_cache_spec``), so
a block holds every layer's KV, target's and drafter's: each token of the pool costs both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from moesim.analytic.layout import stage_layouts
from moesim.analytic.memory import (
    MemoryEstimate,
    kv_cache_bytes_per_token,
    memory_per_gpu,
    stage_params,
)
from moesim.analytic.params import count_params
from moesim.sim.engine_step import step_token_budget
from moesim.sim.serving_requests import Request
from moesim.sim.serving_scheduler import EngineConfig, ServerLog
from moesim.specs import BYTES_PER_ELEMENT, InferenceWorkload, Scenario
from moesim.specs.scenario import draft_scenario


def drafter_weights_bytes(s: Scenario) -> float:
    """Bytes per GPU of the speculative drafter's weights (0 without one). method mtp: the
    model's ``mtp_depth`` MTP modules (DeepSeek-V3 §2.2: projection, one block, norms; the
    embedding and head shared with the model), held by the last pipeline stage, sharded as its
    layers are (tp, experts over ep·etp); method draft: the draft model's weights as the
    drafter runs it (``draft_scenario``: the target's tp, ep for an MoE draft, no pp)."""
    w = s.workload
    assert isinstance(w, InferenceWorkload)
    if w.speculative is None:
        return 0.0
    if w.speculative.method == "mtp":
        m, p = s.model, s.parallel
        last = stage_layouts(m, p)[-1]
        with_mtp = stage_params(m, p, last).total
        without = stage_params(m, p, replace(last, mtp_layers=0)).total
        return (with_mtp - without) * BYTES_PER_ELEMENT[s.precision.weights_inference]
    return memory_per_gpu(draft_scenario(s)).weights


def drafter_kv_bytes_per_token(s: Scenario) -> float:
    """KV-cache bytes per token per GPU of the drafter (0 without one): the draft model's
    layers, or one attention layer per MTP module (vLLM's DeepSeekMultiTokenPredictor builds
    ``num_nextn_predict_layers`` layers, each with its own attention)."""
    w = s.workload
    assert isinstance(w, InferenceWorkload)
    if w.speculative is None:
        return 0.0
    d = draft_scenario(s)
    per = kv_cache_bytes_per_token(d.model, d.parallel, d.precision)
    return per * s.model.mtp_depth if w.speculative.method == "mtp" else per


def kv_bytes_per_token(s: Scenario) -> float:
    """KV-cache bytes per token of the pool on one GPU: the target's and the drafter's."""
    return kv_cache_bytes_per_token(s.model, s.parallel, s.precision) + drafter_kv_bytes_per_token(
        s
    )


def usable_hbm_bytes(s: Scenario) -> float:
    """HBM per GPU the engine may use: ``gpu_memory_utilization`` × HBM (vLLM's flag), all
    of it when unset (the reserve is booked inside the estimate's 'other' either way)."""
    w = s.workload
    assert isinstance(w, InferenceWorkload)
    return s.cluster.gpu.hbm_GB * 1e9 * (w.gpu_memory_utilization or 1.0)


def kv_pool_bytes(s: Scenario, mem: MemoryEstimate) -> float:
    """Bytes per GPU left for the KV cache: usable HBM minus weights, activations of the
    largest step, all-to-all buffers and the reserve (at least 0)."""
    return max(0.0, usable_hbm_bytes(s) - (mem.total - mem.kv_cache))


def kv_capacity_tokens(s: Scenario, mem: MemoryEstimate) -> int:
    """Tokens whose KV cache fits in the pool (every GPU of a replica holds its share of each
    token's KV)."""
    return int(kv_pool_bytes(s, mem) // kv_bytes_per_token(s))


def kv_capacity_sequences(s: Scenario, mem: MemoryEstimate) -> int:
    """Sequences of the mean prompt + output length (``seq_len``) whose KV cache fits in the
    pool."""
    w = s.workload
    assert isinstance(w, InferenceWorkload)
    per_seq = kv_bytes_per_token(s) * w.seq_len
    return max(0, int(kv_pool_bytes(s, mem) // per_seq))


def inference_memory(s: Scenario, concurrent: int) -> MemoryEstimate:
    """Analytic inference memory with the KV cache of ``concurrent`` sequences, and expert
    weights moved to host memory under ``expert_offload`` (two layers' worth staged in HBM)."""
    w = s.workload
    assert isinstance(w, InferenceWorkload)
    mem = memory_per_gpu(s)
    per_seq = kv_bytes_per_token(s) * w.seq_len
    mem = replace(mem, kv_cache=per_seq * concurrent, drafter=drafter_weights_bytes(s))
    if w.expert_offload and s.model.moe is not None:
        counts = count_params(s.model)
        routed = sum(x.routed_experts for x in counts.decoder_layers)
        one_layer = max(x.routed_experts for x in counts.decoder_layers)
        p, wb = s.parallel, BYTES_PER_ELEMENT[s.precision.weights_inference]
        on_gpu = routed / (p.ep * p.etp) / p.pp * wb
        staged = 2 * one_layer / (p.ep * p.etp) * wb
        mem = replace(mem, weights=mem.weights - on_gpu + staged)
    return mem


def memory_note(s: Scenario, mem: MemoryEstimate, capacity: int) -> str | None:
    """Why a serving configuration does not fit (None when it does)."""
    w = s.workload
    assert isinstance(w, InferenceWorkload)
    hbm = usable_hbm_bytes(s)
    seq = f"sequences of {w.seq_len} tokens"
    if w.scheduler == "vllm_v1":  # a paged pool: a batch beyond it is preempted, not refused
        return (
            f"needs {mem.total / 1e9:,.1f} GB of {hbm / 1e9:g} GB per GPU"
            if mem.total > hbm
            else None
        )
    if capacity < 1:
        return (
            f"the weights and reserve take {(mem.total - mem.kv_cache) / 1e9:,.1f} GB of "
            f"{hbm / 1e9:g} GB per GPU: no KV cache of one of the {seq} fits"
        )
    if w.batch_size is not None and w.batch_size > capacity:
        return (
            f"batch_size {w.batch_size} needs the KV cache of {w.batch_size} {seq} "
            f"({mem.kv_cache / 1e9:,.1f} GB per GPU); only {capacity} fit "
            "(kv_capacity_sequences): a static batch is not capped by the KV capacity"
        )
    if mem.total > hbm:
        return f"needs {mem.total / 1e9:,.1f} GB of {hbm / 1e9:g} GB per GPU"
    return None


@dataclass(frozen=True)
class EnginePlan:
    """The engine a serving scenario runs and the memory it was sized from."""

    engine: EngineConfig
    base: MemoryEstimate  # weights, activations, buffers, reserve; no KV cache
    capacity_tokens: int  # KV tokens the pool holds
    capacity_sequences: int  # sequences of seq_len tokens the pool holds
    fits: bool
    note: str | None = None


def plan_engine(s: Scenario, requests: list[Request]) -> EnginePlan:
    """The engine of a serving scenario: its limits (vLLM's names), scheduler and KV pool.

    vllm_v1: a static batch runs ``batch_size`` sequences at once (``max_batch_size`` when
    given and smaller); arrivals up to ``max_batch_size``; the KV pool is paged, so a batch
    beyond it is preempted and queued rather than refused. A pool that cannot hold the longest
    request runs unbounded and the result says it does not fit. prefill_first: concurrency is
    capped at the sequences whose whole KV fits (a static batch runs as given). A step's token
    budget is ``max_prefill_tokens`` per batch in flight (``step_token_budget``: pp of them);
    under vllm_v1 each request rides one of those batches (its cohort: ``max_concurrent_batches``
    = pp)."""
    w = s.workload
    assert isinstance(w, InferenceWorkload)
    base = inference_memory(s, 0)
    tokens = kv_capacity_tokens(s, base)
    capacity = kv_capacity_sequences(s, base)
    usable = usable_hbm_bytes(s)
    if w.scheduler == "prefill_first":
        slots = (
            w.batch_size if w.batch_size is not None else max(1, min(w.max_batch_size, capacity))
        )
        engine = EngineConfig(slots, step_token_budget(s), "prefill_first")
        fits = inference_memory(s, slots).total <= usable and capacity >= 1
        return EnginePlan(engine, base, tokens, capacity, fits)
    slots = w.max_batch_size
    if w.batch_size is not None:
        explicit = "max_batch_size" in w.model_fields_set
        slots = min(w.batch_size, w.max_batch_size) if explicit else w.batch_size
    longest = max(
        (r.prompt_tokens + r.output_tokens - r.cached_tokens for r in requests), default=0
    )
    k = w.speculative.num_speculative_tokens if w.speculative is not None else 0
    # a speculative decode's drafts and its lookahead slots (moesim.sim.scheduler_vllm_v1)
    blocks = -(-(longest + 2 * k) // w.block_size)
    fits_kv = blocks * w.block_size <= tokens
    note = None
    if not fits_kv:
        note = (
            f"the KV pool holds {tokens:,} tokens per replica ({kv_pool_bytes(s, base) / 1e9:,.1f}"
            f" GB per GPU beside {base.total / 1e9:,.1f} GB of weights, activations and "
            f"reserve): the longest request ({longest:,} tokens) does not fit; run as if it did"
        )
    pool = float(tokens) if fits_kv else math.inf
    rate = w.speculative.acceptance_rate if w.speculative is not None else 0.0
    engine = EngineConfig(
        slots, step_token_budget(s), "vllm_v1", pool, w.block_size, k, rate, w.seed, s.parallel.pp
    )
    return EnginePlan(engine, base, tokens, capacity, fits_kv and base.total <= usable, note)


def served_memory(s: Scenario, plan: EnginePlan, log: ServerLog) -> MemoryEstimate:
    """Memory per GPU of the run: under vllm_v1 the KV cache the engine held at its peak (the
    pool is preallocated, but what it held is what a deployment needs); under prefill_first
    every slot's whole sequence."""
    if plan.engine.policy == "prefill_first":
        return inference_memory(s, plan.engine.max_num_seqs)
    held = log.peak_kv_blocks * plan.engine.block_size * kv_bytes_per_token(s)
    return replace(plan.base, kv_cache=held)
