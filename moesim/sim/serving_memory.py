"""Serving memory: one GPU's weights, workspace and KV cache, how many sequences' KV cache fits
beside the rest, and why a configuration does not fit."""

from __future__ import annotations

from dataclasses import replace

from moesim.analytic.memory import MemoryEstimate, kv_cache_bytes_per_token, memory_per_gpu
from moesim.analytic.params import count_params
from moesim.specs import BYTES_PER_ELEMENT, InferenceWorkload, Scenario


def kv_capacity_sequences(s: Scenario, mem: MemoryEstimate) -> int:
    """Sequences of prompt_len + output_len whose KV cache fits beside the weights, workspace
    and reserve of one GPU (every GPU of a replica holds its share of each sequence)."""
    w = s.workload
    assert isinstance(w, InferenceWorkload)
    per_seq = kv_cache_bytes_per_token(s.model, s.parallel, s.precision) * w.seq_len
    free = s.cluster.gpu.hbm_GB * 1e9 - (mem.total - mem.kv_cache)
    return max(0, int(free // per_seq))


def inference_memory(s: Scenario, concurrent: int) -> MemoryEstimate:
    """Analytic inference memory with the KV cache of ``concurrent`` sequences, and expert
    weights moved to host memory under ``expert_offload`` (two layers' worth staged in HBM)."""
    w = s.workload
    assert isinstance(w, InferenceWorkload)
    mem = memory_per_gpu(s)
    per_seq = kv_cache_bytes_per_token(s.model, s.parallel, s.precision) * w.seq_len
    mem = replace(mem, kv_cache=per_seq * concurrent)
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
    hbm = s.cluster.gpu.hbm_GB * 1e9
    seq = f"sequences of {w.seq_len} tokens"
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
