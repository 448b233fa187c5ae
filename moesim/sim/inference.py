"""Serving (stage ``inference``): ``simulate_inference`` runs one replica's engine over its
requests and assembles the result.

Modules, one way down: ``serving_step`` (the cost of one engine step), ``serving_requests``
(requests and arrivals), ``serving_scheduler`` (the engine loop), ``serving_memory`` (KV
capacity and memory).

A *replica* is the tp × pp GPUs holding one copy of the attention; there are ``dp`` of them and
requests are split evenly over them (``arrival_rate_per_s / dp`` each).
``batch_size`` is the number of concurrent sequences per replica.

``model_flops_per_token`` of a serving result is the forward of one generated token (2 FLOPs
per active weight in a GEMM, the LM head, attention over the mean context a generated token
sees: prompt_len + (output_len − 1)/2 keys), not training's 3× forward. ``mfu`` is that times
the output tokens per second per GPU over the bf16 peak (prefill FLOPs not counted); ``mbu``
is the bytes a typical decode step moves to and from HBM on the busiest GPU (weights read,
KV cache read and written, activations) over the step time, as a fraction of the HBM peak.
``goodput_requests_per_s``: requests meeting every ``workload.slo`` target per second (of the
arrival window, or of the makespan for a static batch), all replicas.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import simpy

from moesim.analytic.flops import layer_flops
from moesim.sim.engine import Rank
from moesim.sim.engine_step import SchedulerView, build_engine_step, engine_extras
from moesim.sim.profile import profile_label
from moesim.sim.serving_engine import cohort_extras
from moesim.sim.serving_memory import (
    drafter_kv_bytes_per_token,
    drafter_weights_bytes,
    kv_bytes_per_token,
    memory_note,
    plan_engine,
    served_memory,
)
from moesim.sim.serving_requests import Request, workload_requests
from moesim.sim.serving_scheduler import ServerLog, serve
from moesim.sim.serving_step import ReplicaCost
from moesim.sim.trace import write_trace
from moesim.specs import InferenceWorkload, ModelSpec, Result, Scenario


def generated_token_flops(m: ModelSpec, prompt_len: float, output_len: float) -> float:
    """Forward FLOPs of one generated token: every decoder layer at the mean context a generated
    token attends (prompt_len + (output_len − 1)/2 keys: the first token's query attends the
    prompt, the j-th decode step's prompt_len + j) and the LM head. No MTP heads (not used to
    decode here) and no encoder (run once per request, not per token)."""
    ctx = prompt_len + (output_len - 1) / 2.0
    layers = sum(layer_flops(m, m.is_moe_layer(i), ctx).total for i in range(m.n_layers))
    return layers + 2.0 * m.vocab_size * m.d_model


def speculative_extras(s: Scenario, log: ServerLog) -> dict[str, float]:
    """The drafter's memory (its weights per GPU, its and the target's KV bytes per token) and,
    under vllm_v1, what the seeded acceptance draws gave: drafts verified and accepted, and
    the tokens a sequence gained per verify step (the draws' mean of tokens_per_step)."""
    out = {
        "drafter_weights_GB": drafter_weights_bytes(s) / 1e9,
        "drafter_kv_bytes_per_token": drafter_kv_bytes_per_token(s),
        "kv_bytes_per_token": kv_bytes_per_token(s),
    }
    if log.verify_steps:
        out["draft_tokens"] = log.draft_tokens
        out["accepted_tokens"] = log.accepted_tokens
        # vLLM's spec-decode acceptance rate (accepted / drafted): below a, as the drafts
        # after a sequence's first rejection are rejected with it
        out["draft_acceptance_rate"] = log.accepted_tokens / log.draft_tokens
        out["tokens_per_verify_step"] = 1.0 + log.accepted_tokens / log.verify_steps
    return out


def meets_slo(r: Request, ttft_s: float | None, tpot_s: float | None) -> bool:
    """A request meets its SLO when its TTFT and its TPOT (none for a one-token output) are
    within the targets given."""
    if ttft_s is not None and r.ttft_s > ttft_s:
        return False
    return tpot_s is None or r.output_tokens < 2 or r.tpot_s <= tpot_s


def simulate_inference(
    scenario: Scenario, trace_path: str | Path | None = None, base_dir: Path | None = None
) -> Result:
    s = scenario
    w = s.workload
    assert isinstance(w, InferenceWorkload)
    p = s.parallel
    replicas = p.dp_size * p.cp  # attention replicas (cp does not split decode)
    cost = ReplicaCost(s, base_dir)
    requests, window = workload_requests(w, replicas)
    plan = plan_engine(s, requests)
    stepper = build_engine_step(s, cost, lambda x: ReplicaCost(x, base_dir))
    log = serve(SchedulerView(stepper), requests, plan.engine, window)  # type: ignore[arg-type]
    mem = served_memory(s, plan, log)
    capacity, slots = plan.capacity_sequences, plan.engine.max_num_seqs
    reqs = log.requests
    makespan = log.makespan_s
    ttft = np.array([r.ttft_s for r in reqs])
    tpot = np.array([r.tpot_s for r in reqs if r.output_tokens > 1])
    if math.isinf(window) or not reqs:
        out_tokens = sum(r.output_tokens for r in reqs)
        out_per_s = out_tokens / makespan if makespan > 0 else 0.0
    else:
        out_per_s = log.tokens_in_window / window
    out_per_s *= replicas
    mean_batch = log.decode_batch_sum / log.decode_steps if log.decode_steps else 0.0
    mean_ctx = log.decode_context_sum / log.decode_steps if log.decode_steps else 0.0
    typical_batch = max(1, round(mean_batch))
    micro = stepper.decode_microbatch(typical_batch)  # pp > 1: one micro-batch per stage
    typical = stepper.decode_forward(micro, mean_ctx * micro / typical_batch)
    round_s = stepper.decode_s(typical_batch, mean_ctx)
    counts = cost.counts
    res = Result(
        name=s.name,
        stage="inference",
        gpus=s.gpus,
        params_total=float(counts.total_main),
        params_active=float(counts.active_main),
        model_flops_per_token=generated_token_flops(s.model, w.mean_prompt_len, w.mean_output_len),
        memory_per_gpu_GB=mem.as_GB(),
        fits_in_memory=plan.fits,
        step_time_s=round_s,
        tokens_per_s=out_per_s,
        tokens_per_s_per_gpu=out_per_s / s.gpus,
        output_tokens_per_s=out_per_s,
        time_breakdown_s=typical.time_breakdown_s(),
    )
    gpu = s.cluster.gpu
    if typical.total_s > 0:
        res.mbu = typical.hbm_bytes / typical.total_s / (gpu.hbm_TBps * 1e12)
    res.model_tflops_per_gpu = res.model_flops_per_token * out_per_s / s.gpus / 1e12
    res.mfu = res.model_tflops_per_gpu / gpu.peak_TFLOPS("bf16")
    if len(ttft):
        res.ttft_s_p50 = float(np.percentile(ttft, 50))
        res.ttft_s_p99 = float(np.percentile(ttft, 99))
    if len(tpot):
        res.tpot_s_p50 = float(np.percentile(tpot, 50))
        res.tpot_s_p99 = float(np.percentile(tpot, 99))
    usd_per_s = s.gpus * s.cost.usd_per_gpu_hour / 3600.0
    extra: dict[str, object] = {
        "replicas": replicas,
        "requests": len(reqs) * replicas,
        "concurrency_limit": slots,
        "kv_capacity_sequences": capacity,
        "memory_note": plan.note or memory_note(s, mem, capacity),
        "scheduler": w.scheduler,
        "kv_capacity_tokens": plan.capacity_tokens,
        "preemptions": log.preemptions * replicas,
        "prefill_tokens_computed": log.prefill_tokens * replicas,
        "max_prefill_tokens": w.max_prefill_tokens,
        "prefill_steps": sum(1 for st in log.steps if st[0] != "decode"),
        "mixed_steps": sum(1 for st in log.steps if st[0] == "mixed"),
        "mean_decode_batch": mean_batch,
        "makespan_s": makespan,
        "decode_step_parts_s": {
            "attention": typical.attention_s,
            "dense_ffn": typical.dense_ffn_s,
            "experts": typical.experts_s,
            "lm_head": typical.lm_head_s,
        },
        "profile": profile_label(cost.ctx.profile),
        **engine_extras(stepper, typical_batch, mean_ctx),
    }
    if log.cohort_rounds:  # vllm_v1, pp > 1: how unevenly the requests' cohorts filled rounds
        extra["decode_cohorts"] = cohort_extras(log, p.pp)
    if w.speculative is not None:
        engine_spec = extra["speculative"]
        assert isinstance(engine_spec, dict)
        extra["speculative"] = {**engine_spec, **speculative_extras(s, log)}
    if not reqs:  # Poisson arrivals that produced no request in the window
        rate, window = w.arrival_rate_per_s, w.duration_s
        extra["note"] = (
            f"no request arrived: {rate:g} requests/s over {window:g} s expects "
            f"{(rate or 0) * (window or 0):.3g}; raise workload.arrival_rate_per_s or "
            "workload.duration_s (TTFT and TPOT need at least one request)"
        )
    if out_per_s > 0:
        extra["cost_per_million_tokens_usd"] = usd_per_s / out_per_s * 1e6
        if w.total_tokens:
            res.gpu_hours = w.total_tokens / out_per_s * s.gpus / 3600.0
            res.cost_usd = res.gpu_hours * s.cost.usd_per_gpu_hour
    if w.slo is not None and reqs:
        good = sum(meets_slo(r, w.slo.ttft_s, w.slo.tpot_s) for r in reqs)
        span = window if not math.isinf(window) else makespan
        extra["slo_attainment"] = good / len(reqs)
        extra["goodput_requests_per_s"] = good * replicas / span if span > 0 else 0.0
    if len(ttft):
        extra["ttft_s_mean"] = float(np.mean(ttft))
    if len(tpot):
        extra["tpot_s_mean"] = float(np.mean(tpot))
    if s.model.moe is not None:
        extra["experts_touched_per_layer"] = typical.experts_touched
        extra["expert_weights_read_GB_per_step"] = typical.expert_bytes_read / 1e9
    for k, v in extra.items():
        if v is not None:
            setattr(res, k, v)
    if trace_path is not None:
        rank = Rank(simpy.Environment(), 0, "replica 0 (serving engine)")
        rank.intervals = [("compute", kind, "compute", a, b) for kind, a, b, _ in log.steps]
        write_trace([rank], trace_path)
    return res
