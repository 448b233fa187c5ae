"""Prefill/decode disaggregation (``workload.disaggregated``): a prefill pool and a decode pool,
each with its own parallel layout, and the prompts' KV cache sent between them.

Requests arrive as one Poisson stream (``arrival_rate_per_s``) and are dealt round-robin to the
P prefill replicas (request i to replica i mod P) and the D decode replicas (i mod D), as a
load balancer spreading them evenly does. Decode replica 0 stands for all of them (symmetric,
as the colocated server's replica 0 does): the prefill replicas that serve its requests are
simulated whole (their queues hold the other requests too) with the plain serving engine
(``serving_scheduler.serve``, prefill only: a request leaves at the end of the prefill step
that finishes its prompt), then each request's KV cache crosses to the decode replica
(``kv_transfer``: a FIFO per prefill replica), then the decode replica decodes
(``decode_server``). TTFT = queue + prefill + KV transfer + decode queue + first decode round;
TPOT is the decode replica's round time.

Both pools size their engines as colocated serving does (``serving_memory.plan_engine``): under
``workload.scheduler: vllm_v1`` (the default) each replica's KV cache is a paged pool of
``block_size``-token blocks, usable HBM left after its weights and its step's activations;
a prefill replica holds a prompt's blocks until its prefill ends (not while its KV is sent), a
decode replica allocates a request's prompt blocks when it admits it and preempts the newest
request when a block runs out (recomputed on the decode replica, counted in ``preemptions``).
With speculative decoding the decode pool's vllm_v1 engine schedules each decode's drafts in its
token budget and KV blocks and draws their acceptances (``moesim.sim.scheduler_vllm_v1``); the
prefill pool drafts nothing. Under prefill_first the decode replica reserves every admitted
request's whole sequence (slots capped by the KV capacity in sequences).

The throughput is what the decode replicas deliver inside the arrival window; a slow prefill
pool starves them, a slow decode pool queues its arrivals, so the slower pool limits it. The
result also gives each pool's capacity (requests/s it sustains alone: prefill from its step
time per prompt at full chunks, decode from its round time at full slots) and names the
``bottleneck``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moesim.analytic.memory import MemoryEstimate
from moesim.sim.decode_server import DecodeLog, DecodeRequest, serve_decode, serve_decode_paged
from moesim.sim.engine_step import (
    EngineStep,
    SchedulerView,
    build_engine_step,
    engine_extras,
    step_token_budget,
)
from moesim.sim.kv_transfer import TransferQueue, kv_link, kv_transfer_s
from moesim.sim.profile import profile_label
from moesim.sim.serving_memory import (
    EnginePlan,
    memory_note,
    plan_engine,
    served_memory,
    usable_hbm_bytes,
)
from moesim.sim.serving_requests import Request, workload_requests
from moesim.sim.serving_scheduler import ServerLog, serve
from moesim.sim.serving_step import ReplicaCost
from moesim.specs import InferenceWorkload, Result, Scenario
from moesim.specs.scenario import pool_scenario


@dataclass
class Pool:
    """One pool: its scenario, step costs and replicas; its engine and memory once its
    requests are known (``size``)."""

    which: str
    scenario: Scenario
    cost: ReplicaCost
    engine: EngineStep
    replicas: int
    plan: EnginePlan | None = None
    memory: MemoryEstimate | None = None  # what a replica held at its peak
    preemptions: float = 0.0  # per replica

    def size(self, requests: list[Request]) -> EnginePlan:
        """Its engine for ``requests`` (one replica's): limits, scheduler and KV pool."""
        self.plan = plan_engine(self.scenario, requests)
        return self.plan

    @property
    def slots(self) -> int:
        """Sequences a full replica runs at once: its limit, or the mean sequences whose KV
        fits when fewer (at least one)."""
        assert self.plan is not None
        return max(1, min(self.plan.engine.max_num_seqs, self.plan.capacity_sequences))

    @property
    def fits(self) -> bool:
        assert self.plan is not None and self.memory is not None
        return self.plan.fits and self.memory.total <= usable_hbm_bytes(self.scenario)


def build_pool(s: Scenario, which: str, base_dir: Path | None) -> Pool:
    ps = pool_scenario(s, which)  # type: ignore[arg-type]
    cost = ReplicaCost(ps, base_dir)
    engine = build_engine_step(ps, cost, lambda x: ReplicaCost(x, base_dir))
    replicas = ps.parallel.dp_size * ps.parallel.cp
    return Pool(which, ps, cost, engine, replicas)


def prefill_s_per_prompt(pool: Pool, prompt_len: int, max_prefill_tokens: int) -> float:
    """Seconds of prefill one prompt costs a replica running full steps: whole prompts packed
    into a step of ``max_prefill_tokens`` (``step_token_budget``: pp batches in flight) when
    they fit, else the prompt's chunks."""
    if prompt_len <= max_prefill_tokens:
        n = max_prefill_tokens // prompt_len
        return pool.engine.prefill_s([(0, prompt_len)] * n, n) / n
    total, off = 0.0, 0
    while off < prompt_len:
        c = min(max_prefill_tokens, prompt_len - off)
        total += pool.engine.prefill_s([(off, c)], int(off + c == prompt_len))
        off += c
    return total


def decode_s_per_request(pool: Pool, prompt_len: int, output_len: int) -> float:
    """Seconds of a full decode replica's time one request takes: its rounds at full slots,
    over the slots sharing them (contexts at their mean)."""
    if output_len <= 1:
        return 0.0
    e = pool.engine
    rounds = math.ceil((output_len - 1) / e.tokens_per_step)
    b = pool.slots
    round_s = e.decode_s(b, b * (prompt_len + 1 + (output_len - 1) / 2.0))
    return rounds * round_s / b


def simulate_disaggregated(s: Scenario, base_dir: Path | None = None) -> Result:
    w = s.workload
    assert isinstance(w, InferenceWorkload) and w.disaggregated is not None
    pre, dec = build_pool(s, "prefill", base_dir), build_pool(s, "decode", base_dir)
    link = kv_link(s, pre.cost.cm, pre.scenario.gpus, dec.scenario.gpus)
    every, window = workload_requests(w, 1)  # the whole deployment's requests, in order
    P, D = pre.replicas, dec.replicas
    mine = [i for i in range(len(every)) if i % D == 0]
    ready: dict[int, float] = {}  # KV cache at the decode replica
    done: dict[int, float] = {}  # prefill finished
    xfer: dict[int, tuple[float, float]] = {}  # (seconds, bytes) of its KV transfer
    pre_busy = pre_span = 0.0
    pre_view = SchedulerView(pre.engine)
    peak: ServerLog | None = None
    simulated = sorted({i % P for i in mine})
    pre_engine = pre.size([Request(x.arrival_s, x.prompt_tokens, 1) for x in every]).engine
    for r in simulated:
        idx = list(range(r, len(every), P))
        prompts = [Request(every[i].arrival_s, every[i].prompt_tokens, 1) for i in idx]
        log = serve(pre_view, prompts, pre_engine, window)  # type: ignore[arg-type]
        pre_busy += sum(b - a for _, a, b, _ in log.steps)
        pre_span += max((b for _, _, b, _ in log.steps), default=0.0)
        pre.preemptions += log.preemptions / len(simulated)
        if peak is None or log.peak_kv_blocks >= peak.peak_kv_blocks:
            peak = log
        queue = TransferQueue()
        for i, req in zip(idx, log.requests, strict=True):
            xfer[i] = kv_transfer_s(pre.scenario, dec.scenario, req.prompt_tokens, link)
            done[i] = req.first_token_s
            ready[i] = queue.send(req.first_token_s, xfer[i][0])
    assert pre.plan is not None and peak is not None
    pre.memory = served_memory(pre.scenario, pre.plan, peak)
    reqs = [
        DecodeRequest(
            every[i].arrival_s, ready[i], done[i], every[i].prompt_tokens, every[i].output_tokens
        )
        for i in mine
    ]
    dlog = _decode(dec, reqs, window)
    xfer_s = float(np.mean([xfer[i][0] for i in mine])) if mine else 0.0
    xfer_b = float(np.mean([xfer[i][1] for i in mine])) if mine else 0.0
    return _result(s, w, pre, dec, dlog, reqs, (pre_busy, pre_span), link, (xfer_s, xfer_b), window)


def _decode(dec: Pool, reqs: list[DecodeRequest], window: float) -> DecodeLog:
    """Run decode replica 0 over its requests with the pool's engine (paged under vllm_v1,
    whole-sequence slots otherwise) and record its memory and preemptions."""
    plan = dec.size([Request(r.ready_s, r.prompt_tokens, r.output_tokens) for r in reqs])
    if plan.engine.policy == "vllm_v1":
        dlog = serve_decode_paged(SchedulerView(dec.engine), reqs, plan.engine, window)
        held = ServerLog(requests=[], peak_kv_blocks=dlog.peak_kv_blocks)
        dec.memory = served_memory(dec.scenario, plan, held)
    else:
        dlog = serve_decode(dec.engine, reqs, dec.slots, window)
        dec.memory = served_memory(dec.scenario, plan, ServerLog(requests=[]))
    dec.preemptions = dlog.preemptions
    return dlog


def _pool_summary(pool: Pool, utilization: float, capacity_rps: float) -> dict:
    p, plan = pool.scenario.parallel, pool.plan
    assert plan is not None and pool.memory is not None
    return {
        "gpus": pool.scenario.gpus,
        "replicas": pool.replicas,
        "layout": {"tp": p.tp, "pp": p.pp, "ep": p.ep, "etp": p.etp, "dp": p.dp_size},
        "dispatcher": pool.cost.ctx.dispatcher if pool.scenario.model.moe else None,
        "scheduler": plan.engine.policy,
        "slots_per_replica": pool.slots,
        "kv_capacity_sequences": plan.capacity_sequences,
        "kv_capacity_tokens": plan.capacity_tokens,
        "preemptions_per_replica": pool.preemptions,
        "memory_per_gpu_GB": pool.memory.as_GB(),
        "fits_in_memory": pool.fits,
        "memory_note": plan.note
        or memory_note(pool.scenario, pool.memory, plan.capacity_sequences),
        "utilization": utilization,
        "capacity_requests_per_s": capacity_rps,
    }


def _result(s, w, pre, dec, dlog, reqs, pre_time, link, xfer, window) -> Result:
    from moesim.sim.inference import generated_token_flops

    D = dec.replicas
    xfer_s, xfer_b = xfer
    ttft = np.array([r.first_token_s - r.arrival_s for r in reqs])
    tpot = np.array(
        [(r.finish_s - r.admitted_s) / (r.output_tokens - 1) for r in reqs if r.output_tokens > 1]
    )
    span = max((b for _, b, _ in dlog.steps), default=0.0)
    if math.isinf(window):  # a trace whose requests all arrive at once: timed to the last token
        out_tokens = sum(r.output_tokens for r in reqs)
        out_per_s = out_tokens / span * D if span > 0 else 0.0
    else:
        out_per_s = dlog.tokens_in_window / window * D
    steps = dlog.decode_steps
    mean_batch = dlog.decode_batch_sum / steps if steps else 0.0
    mean_ctx = dlog.decode_context_sum / steps if steps else 0.0
    mb = max(1, round(mean_batch))
    micro = dec.engine.decode_microbatch(mb)  # pp > 1: one micro-batch per stage
    typical = dec.engine.decode_forward(micro, mean_ctx * micro / mb)
    round_s = dec.engine.decode_s(mb, mean_ctx)
    prompt, output = round(w.mean_prompt_len), round(w.mean_output_len)  # capacity at the means
    budget = step_token_budget(pre.scenario)
    pre_cap = pre.replicas / prefill_s_per_prompt(pre, max(1, prompt), budget)
    dec_per_req = decode_s_per_request(dec, prompt, output)
    dec_cap = D / dec_per_req if dec_per_req > 0 else math.inf
    pre_busy, pre_span = pre_time
    counts = dec.cost.counts
    res = Result(
        name=s.name,
        stage="inference",
        gpus=s.gpus,
        params_total=float(counts.total_main),
        params_active=float(counts.active_main),
        model_flops_per_token=generated_token_flops(s.model, w.mean_prompt_len, w.mean_output_len),
        memory_per_gpu_GB=dec.memory.as_GB(),
        fits_in_memory=pre.fits and dec.fits,
        step_time_s=round_s,
        tokens_per_s=out_per_s,
        tokens_per_s_per_gpu=out_per_s / s.gpus,
        output_tokens_per_s=out_per_s,
        time_breakdown_s=typical.time_breakdown_s(),
    )
    if len(ttft):
        res.ttft_s_p50 = float(np.percentile(ttft, 50))
        res.ttft_s_p99 = float(np.percentile(ttft, 99))
        res.ttft_s_mean = float(np.mean(ttft))
    if len(tpot):
        res.tpot_s_p50 = float(np.percentile(tpot, 50))
        res.tpot_s_p99 = float(np.percentile(tpot, 99))
        res.tpot_s_mean = float(np.mean(tpot))
    res.requests = len(reqs) * D
    res.preemptions = round(dlog.preemptions * D + pre.preemptions * pre.replicas)
    res.replicas = pre.replicas + D
    res.mean_decode_batch = mean_batch
    res.makespan_s = span
    res.profile = profile_label(dec.cost.ctx.profile)
    for k, v in engine_extras(dec.engine, mb, mean_ctx).items():
        setattr(res, k, v)
    spec = getattr(res, "speculative", None)
    if spec is not None:  # the decode pool's drafter memory and acceptance draws
        from moesim.sim.inference import speculative_extras

        log = dlog.engine_log or ServerLog(requests=[])
        res.speculative = {**spec, **speculative_extras(dec.scenario, log)}
    res.disaggregated = {
        "prefill": _pool_summary(pre, pre_busy / pre_span if pre_span else 0.0, pre_cap),
        "decode": _pool_summary(dec, dlog.busy_s / span if span else 0.0, dec_cap),
        "bottleneck": "prefill" if pre_cap < dec_cap else "decode",
        "kv_link": link.kind,
        "kv_transfer_s": xfer_s,  # mean over the decode replica's requests
        "kv_transfer_GB_per_request": xfer_b / 1e9,
        "ttft_parts_s_mean": _ttft_parts(reqs),
    }
    if out_per_s > 0:
        usd_per_s = s.gpus * s.cost.usd_per_gpu_hour / 3600.0
        res.cost_per_million_tokens_usd = usd_per_s / out_per_s * 1e6
        if w.total_tokens:
            res.gpu_hours = w.total_tokens / out_per_s * s.gpus / 3600.0
            res.cost_usd = res.gpu_hours * s.cost.usd_per_gpu_hour
    return res


def _ttft_parts(reqs: list[DecodeRequest]) -> dict[str, float]:
    """Mean seconds of a request's way to its first token: prefill (its queue included), KV
    transfer (waiting for the replica's links included), waiting for a decode slot, and its
    first decode round."""
    if not reqs:
        return {}
    return {
        "prefill": float(np.mean([r.prefilled_s - r.arrival_s for r in reqs])),
        "kv_transfer": float(np.mean([r.ready_s - r.prefilled_s for r in reqs])),
        "decode_queue": float(np.mean([r.admitted_s - r.ready_s for r in reqs])),
        "first_decode_round": float(np.mean([r.first_token_s - r.admitted_s for r in reqs])),
    }
