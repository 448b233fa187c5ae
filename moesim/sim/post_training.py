"""Post-training steps: SFT, DPO, GRPO and PPO, composed from the pretraining pipeline passes
(forward-only and forward + backward, ``training_step.pipeline_pass``) and the serving engine
(``inference``) for rollouts. Each phase is its own SimPy run on the same layout; phases follow
one another (each needs the previous one's output), so the step is their sum and
``time_breakdown_s`` carries one key per phase besides the usual compute/comm/bubble split.

Per optimizer step (N sequences = ``global_batch``, × ``group_size`` for GRPO):

- **SFT**: one training pass (pretraining's), LoRA when given. Padding costs compute but is not
  a token: ``tokens_per_s`` counts real tokens (× ``packing_efficiency``), ``loss_tokens_per_s``
  the ones in the loss (× (1 − ``prompt_fraction``)).
- **DPO** (Rafailov et al. 2023; TRL): ``reference`` — a forward of the frozen reference on
  chosen and rejected (skipped when ``precomputed``), then ``training`` — the policy's forward
  and backward on both (a microbatch holds the pair, so 2 × seq_len tokens).
- **GRPO** (Shao et al. 2024; TRL/veRL): ``weight_sync`` (see below), ``rollout`` (N = prompts ×
  group sequences of ``response_len`` through the serving engine on the rollout layout —
  ``workload.rollout_parallel``, default the training one: prefill, decode steps, KV-limited
  waves), ``reward`` (``rule``: a CPU verifier,
  0 s; ``model``: a reward-model forward), ``old_logprobs`` (a policy forward, only when
  ``ppo_epochs`` > 1: otherwise the ratio's denominator is the detached current policy),
  ``reference`` (skipped when ``kl_coef`` is 0), ``training`` (``ppo_epochs`` training passes).
- **PPO** (Ouyang et al. 2022): as GRPO with N = prompts, plus ``values`` (the critic's forward),
  ``gae`` (advantages: element-wise over the N × response_len rewards and values) and
  ``critic_training`` (the critic's training passes); ``old_logprobs`` always runs.

**Weight sync** (``analytic.post_training.weight_sync_bytes`` says what moves): colocated, a
ZeRO-3 all-gather of the training shard, a memory-bound pass that reads it (``precision.params``)
and writes the engine's shard (``weights_inference``: fp8/int4 quantize in this pass), then the
part of the rollout shard a GPU does not hold over NVLink (over the NIC when its sources span
nodes) — nothing when the rollout layout is training's or finer. Disaggregated: a quantization
pass on the training GPUs when ``weights_inference`` is not ``params``, then every rollout GPU
receives its whole shard in ``weights_inference`` bytes over its share of the NICs (a pipelined
broadcast: the training GPUs send one copy between them, rollout replicas forward it).

The responses are assumed to run to ``response_len`` (an upper bound: real ones stop earlier).
Reward and critic models keep the policy's layout (ep and etp fall to 1 for a dense one) and are
costed with their LM head (a scalar value head is smaller; the difference is 2·V·d per token).
MFU counts the policy's training passes only (model FLOPs: 3·F per token, 2·F + 3·F_adapters
with LoRA) over the whole step's GPU time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from moesim.analytic.flops import token_flops
from moesim.analytic.lora import LoRALayer, lora_counts, lora_forward_flops_per_token
from moesim.analytic.microbatches import n_microbatches, sequences_per_step
from moesim.analytic.params import count_params
from moesim.analytic.post_training import (
    critic_model_of,
    needs_reference_pass,
    post_training_memory,
    reward_model_of,
    rollout_gpu_count,
    rollout_gpu_memory,
    rollout_layout,
    rollout_sequences,
    weight_sync_bytes,
)
from moesim.sim.context import SimContext
from moesim.sim.costmodel import OpWork
from moesim.sim.engine import Rank, run_to_completion
from moesim.sim.run import COMM_CATEGORIES, build_context, simulate_pass
from moesim.sim.serving_requests import fixed_requests
from moesim.sim.serving_scheduler import EngineConfig, serve
from moesim.sim.serving_step import ReplicaCost
from moesim.sim.trace import write_trace
from moesim.sim.training_step import Pipeline, pipeline_pass
from moesim.sim.utilization import utilization
from moesim.specs import (
    BYTES_PER_ELEMENT,
    DPOWorkload,
    GRPOWorkload,
    InferenceWorkload,
    LoRASpec,
    ModelSpec,
    PPOWorkload,
    Result,
    Scenario,
    SFTWorkload,
)

PART_KEYS = ("compute", *COMM_CATEGORIES, "bubble", "imbalance", "exposed_comm", "optimizer")


@dataclass
class Phase:
    """One phase of a step: its time and the usual parts (mean over simulated ranks)."""

    name: str
    time_s: float
    parts: dict[str, float]
    ranks: list[Rank] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)


# -- LoRA in the simulator ----------------------------------------------------------------------
class LoRAExpertCost:
    """Routed experts with adapters: the frozen experts' backward computes input gradients only
    (one forward's worth), the expert adapters run forward and full backward per routed copy."""

    def __init__(self, ctx: SimContext, base, copy_flops: float):
        self.ctx, self.base, self.copy_flops = ctx, base, copy_flops

    def time_s(self, copies: float, backward: bool = False) -> float:
        frozen = self.base.time_s(copies)
        p = self.ctx.parallel
        flops = copies * self.copy_flops / p.etp
        io = copies * 2 * self.ctx.model.d_model * self.ctx.precision.activation_bytes
        adapter = self.ctx.cm.time_s(OpWork("lora_experts", "gemm", flops, io)) if flops else 0.0
        return frozen + (2.0 if backward else 1.0) * adapter


def apply_lora(ctx: SimContext, lora: LoRASpec) -> Pipeline:
    """Turn ``ctx`` into a LoRA step: adapter time in every layer, frozen-base backward (input
    gradients only), gradients/optimizer/all-gathers of the adapters alone. Returns the pipeline
    to run (its LM head backward is the frozen head's: input gradients only)."""
    m, p, cm = ctx.model, ctx.parallel, ctx.cm
    ab, pb = ctx.precision.activation_bytes, ctx.precision.param_bytes
    n_enc = m.n_encoder_layers
    layers = lora_counts(m, lora).layers
    none = LoRALayer(0, 0, 0, 0, 0, 0.0)
    t = ctx.tokens

    def adapter_s(name: str, n_params: int, tokens: float) -> float:
        if n_params <= 0:
            return 0.0
        flops = tokens * 2.0 * n_params / p.tp
        return cm.time_s(
            OpWork(name, "gemm", flops, n_params * pb / p.tp + 2 * tokens * m.d_model * ab / p.tp)
        )

    for i, lc in list(ctx.layers.items()):
        ll = layers[i - n_enc] if i >= n_enc else none
        att = adapter_s("lora_attention", ll.attention, t)
        mlp = adapter_s("lora_mlp", ll.mlp, t)
        rt = adapter_s("lora_router", ll.router, t / p.tp) if lc.is_moe else 0.0
        ctx.layers[i] = replace(
            lc,
            attention_s=lc.attention_s + att,
            # frozen projections: input gradients (≈ their forward); core backward ≈ 2× forward
            attention_bwd_s=lc.attention_s + lc.attention_core_s + 2 * att,
            ffn_s=lc.ffn_s + mlp,
            ffn_bwd_s=lc.ffn_s + 2 * mlp,
            router_s=lc.router_s + rt,
            router_bwd_s=lc.router_s + 2 * rt,
            non_expert_params=ll.non_expert / p.tp,
            expert_params=ll.expert / (p.ep * p.etp),
        )
    if m.moe is not None:
        copy = next((x.expert_copy_flops for x in layers if x.expert_copy_flops), 0.0)
        ctx.expert_cost = LoRAExpertCost(ctx, ctx.expert_cost, copy)
    # embeddings and the LM head are frozen: no gradients, optimizer states or all-gathers
    ctx.counts = replace(ctx.counts, embedding=0, lm_head=0, final_norm=0, mtp=0)
    pipe = Pipeline(ctx)
    ex = pipe.extras
    ex.head_s = (ex.head_s[0], ex.head_s[0])
    ex.mtp_s = {r: (f, f) for r, (f, _) in ex.mtp_s.items()}
    return pipe


# -- phases --------------------------------------------------------------------------------------
def variant(s: Scenario, model: ModelSpec, **workload) -> Scenario:
    """``s`` with another model (reward, critic) on the same layout; a dense model drops ep."""
    d = json.loads(s.model_dump_json())
    d["model"] = json.loads(model.model_dump_json())
    if model.moe is None or model.moe.n_routed_experts % s.parallel.ep:
        d["parallel"] |= {"ep": 1, "etp": 1}
    if model != s.model:  # the layout options place the policy's layers: split evenly
        for key in ("pipeline_layout", "first_stage_layers", "last_stage_layers"):
            d["parallel"][key] = None
        d["parallel"] |= {"account_for_embedding": False, "account_for_loss": False}
    d["workload"] |= workload
    try:
        return Scenario.model_validate(d)
    except ValueError as e:
        raise ValueError(f"workload: {model.name} cannot run on the policy's layout: {e}") from None


def pipeline_phase(
    s: Scenario,
    name: str,
    train: bool,
    fidelity: str | None,
    base_dir: Path | None,
    lora: LoRASpec | None = None,
    repeat: int = 1,
) -> Phase:
    """A forward-only (``train`` False) or training pass over the step's sequences, ``repeat``
    times (PPO epochs), extrapolated to all microbatches under
    ``simulation.microbatches_simulated`` (``moesim.sim.run.simulate_pass``)."""

    def run(scenario: Scenario) -> tuple[SimContext, list[Rank]]:
        ctx = build_context(scenario, fidelity, base_dir)
        pipe = apply_lora(ctx, lora) if lora is not None else None
        procs = pipeline_pass(ctx, backward=train, optimizer=train, pipeline=pipe)
        run_to_completion(ctx.env, procs)
        return ctx, [ctx.ranks[g] for g in sorted(ctx.ranks)]

    ctx, ranks, step, parts, _ = simulate_pass(s, run)
    parts = {k: repeat * parts[k] for k in PART_KEYS}
    extra = {"dropped": ctx.dropped_copies, "offered": ctx.offered_copies}
    return Phase(name, repeat * step, parts, ranks, extra)


def rollout_phase(s: Scenario, base_dir: Path | None) -> Phase:
    """Generate the step's responses with the serving engine on the rollout GPUs."""
    w = s.workload
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    roll, slots, capacity = rollout_scenario(s)
    per_replica = rollout_sequences(s)
    cost = ReplicaCost(roll, base_dir)
    assert isinstance(roll.workload, InferenceWorkload)
    requests = fixed_requests([0.0] * per_replica, w.prompt_len, w.response_len)
    engine = EngineConfig(
        max_num_seqs=slots, max_num_batched_tokens=roll.workload.max_prefill_tokens
    )
    log = serve(cost, requests, engine)
    time_s = log.makespan_s
    batch = log.decode_batch_sum / max(log.decode_steps, 1)
    typical = cost.decode(max(1, round(batch)), log.decode_context_sum / max(log.decode_steps, 1))
    frac = typical.comm_s / typical.total_s if typical.total_s else 0.0
    parts = dict.fromkeys(PART_KEYS, 0.0)
    parts["compute"] = time_s * (1 - frac)
    parts["exposed_comm"] = time_s * frac
    parts["tp_comm"] = time_s * typical.tp_comm_s / typical.total_s if typical.total_s else 0.0
    parts["all_to_all"] = time_s * typical.all_to_all_s / typical.total_s if typical.total_s else 0
    rp = roll.parallel
    extra: dict[str, object] = {
        "rollout_parallel": {"tp": rp.tp, "pp": rp.pp, "ep": rp.ep, "etp": rp.etp, "dp": rp.dp},
        "rollout_sequences_per_replica": per_replica,
        "rollout_concurrency": slots,
        "rollout_kv_capacity_sequences": capacity,
        "rollout_waves": math.ceil(per_replica / slots),
        "rollout_decode_steps": log.decode_steps,
        "rollout_tpot_s": typical.total_s,
    }
    if s.model.moe is not None:
        extra["rollout_experts_touched_per_layer"] = typical.experts_touched
    return Phase("rollout", time_s, parts, extra=extra)


def rollout_scenario(s: Scenario) -> tuple[Scenario, int, int]:
    """The serving scenario of the rollout engine (the rollout layout on the rollout GPUs), its
    concurrent sequences per replica (at least 1: what is timed) and how many fit (may be 0)."""
    w = s.workload
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    layout = rollout_layout(s)
    d = json.loads(s.model_dump_json())
    d["workload"] = {
        "stage": "inference",
        "prompt_len": w.prompt_len,
        "output_len": w.response_len,
        "batch_size": 1,
    }
    d["parallel"] = json.loads(layout.model_dump_json())
    if w.rollout == "disaggregated":
        gpus, gpn = rollout_gpu_count(s), s.cluster.gpus_per_node
        d["cluster"] |= {"nodes": max(1, gpus // gpn), "gpus_per_node": min(gpus, gpn)}
        mem = rollout_gpu_memory(s)
        slots, capacity = mem.slots, mem.capacity
    else:
        mem = post_training_memory(s)
        slots, capacity = mem.rollout_slots, mem.rollout_kv_capacity
    field = "workload.rollout_parallel" if w.rollout_parallel else "workload"
    try:
        roll = Scenario.model_validate(d)
    except ValueError as e:
        why = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
        raise ValueError(f"{field}: the rollout engine's layout cannot be built: {why}") from None
    return roll, slots, capacity


def weight_sync_phase(s: Scenario, ctx_s: SimContext) -> Phase:
    """New policy weights into the rollout engine (see the module docstring)."""
    w = s.workload
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    p, prec = s.parallel, s.precision
    sync = weight_sync_bytes(s)
    pb, wb = prec.param_bytes, BYTES_PER_ELEMENT[prec.weights_inference]
    cm = ctx_s.cm
    parts = dict.fromkeys(PART_KEYS, 0.0)
    cluster = s.cluster
    inter = cluster.inter
    nic_Bps = inter.nic_Gbps / 8 * 1e9 * cm.link_fraction("network")
    nic_Bps *= inter.nics_per_node / cluster.gpus_per_node
    extra: dict[str, object] = {"weight_sync_GB_per_gpu": sync.moved_bytes / 1e9}
    if w.rollout == "colocated":
        # read the training shard, write the engine's (a copy, or a quantization pass)
        convert_bytes = sync.train_params * pb + sync.rollout_params * wb
        convert_s = cm.time_s(OpWork("weight_convert", "memory_bound", 0.0, convert_bytes))
        gather_s = 0.0
        if p.zero_stage >= 3:
            gather_s = ctx_s.all_gather_s(ctx_s.grid.dp_group(0), sync.train_params * pb)
        reshard_s = 0.0
        if sync.moved_bytes > 0:
            if sync.within_node:
                link_Bps = cluster.intra.bandwidth_GBps * 1e9 * cm.link_fraction("nvlink")
                latency_s = cluster.intra.latency_us * 1e-6
            else:
                link_Bps, latency_s = nic_Bps, inter.latency_us * 1e-6
            reshard_s = sync.moved_bytes / link_Bps + latency_s
        parts["compute"] = convert_s
        parts["exposed_comm"] = gather_s + reshard_s
        parts["dp_comm"] = gather_s
        extra["weight_sync_parts_s"] = {
            "zero3_gather": gather_s,
            "convert": convert_s,
            "reshard": reshard_s,
        }
        return Phase("weight_sync", convert_s + gather_s + reshard_s, parts, extra=extra)
    # disaggregated: quantize on the training GPUs (when the engine's precision differs), then a
    # pipelined broadcast: each rollout GPU receives its shard over its share of the NICs while
    # the training GPUs send one copy of the model between them
    quant_s = 0.0
    if wb != pb:
        quant = OpWork("weight_quantize", "memory_bound", 0.0, sync.train_params * (pb + wb))
        quant_s = cm.time_s(quant)
    send = count_params(s.model).total * wb / s.gpus
    transfer_s = max(sync.moved_bytes, send) / nic_Bps + inter.latency_us * 1e-6
    parts["compute"] = quant_s
    parts["exposed_comm"] = transfer_s
    extra["weight_sync_parts_s"] = {"quantize": quant_s, "transfer": transfer_s}
    return Phase("weight_sync", quant_s + transfer_s, parts, extra=extra)


def gae_phase(s: Scenario, ctx_s: SimContext) -> Phase:
    """Advantages and returns: a backward scan over rewards and values (fp32), memory-bound."""
    w = s.workload
    seqs_per_gpu = w.global_batch / (s.parallel.dp_size * s.parallel.cp)
    nbytes = 4 * 4.0 * seqs_per_gpu * w.response_len  # rewards, values in; advantages, returns out
    t = ctx_s.cm.time_s(OpWork("gae", "memory_bound", 0.0, nbytes))
    parts = dict.fromkeys(PART_KEYS, 0.0)
    parts["compute"] = t
    return Phase("gae", t, parts)


# -- the step ------------------------------------------------------------------------------------
def phases_of(s: Scenario, fidelity: str | None, base_dir: Path | None) -> list[Phase]:
    w = s.workload
    lora = getattr(w, "lora", None)
    if isinstance(w, SFTWorkload):
        return [pipeline_phase(s, "training", True, fidelity, base_dir, lora)]
    out: list[Phase] = []
    if isinstance(w, DPOWorkload):
        if needs_reference_pass(s):
            out.append(pipeline_phase(s, "reference", False, fidelity, base_dir))
        out.append(pipeline_phase(s, "training", True, fidelity, base_dir, lora))
        return out
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    probe = build_context(s, fidelity, base_dir)  # cost model, grid and counts of the policy
    out.append(weight_sync_phase(s, probe))
    out.append(rollout_phase(s, base_dir))
    rm = reward_model_of(s)
    if rm is None:
        out.append(Phase("reward", 0.0, dict.fromkeys(PART_KEYS, 0.0)))  # rule-based verifier
    else:
        out.append(pipeline_phase(variant(s, rm), "reward", False, fidelity, base_dir))
    if isinstance(w, PPOWorkload) or w.ppo_epochs > 1:
        out.append(pipeline_phase(s, "old_logprobs", False, fidelity, base_dir, lora))
    if needs_reference_pass(s):
        out.append(pipeline_phase(s, "reference", False, fidelity, base_dir))
    critic = critic_model_of(s)
    if critic is not None:
        out.append(pipeline_phase(variant(s, critic), "values", False, fidelity, base_dir))
        out.append(gae_phase(s, probe))
    out.append(pipeline_phase(s, "training", True, fidelity, base_dir, lora, w.ppo_epochs))
    if critic is not None:
        cs = variant(s, critic)
        out.append(
            pipeline_phase(cs, "critic_training", True, fidelity, base_dir, None, w.ppo_epochs)
        )
    return out


def simulate_post_training(
    scenario: Scenario,
    fidelity: str | None = None,
    trace_path: str | Path | None = None,
    base_dir: Path | None = None,
) -> Result:
    s = scenario
    w = s.workload
    phases = phases_of(s, fidelity, base_dir)
    step_s = sum(ph.time_s for ph in phases)
    breakdown = {k: sum(ph.parts[k] for ph in phases) for k in PART_KEYS}
    for ph in phases:
        breakdown[ph.name] = breakdown.get(ph.name, 0.0) + ph.time_s
    mem = post_training_memory(s)
    pc = count_params(s.model)
    fl = token_flops(s.model, w.seq_len)
    lora = getattr(w, "lora", None)
    if lora is not None:
        adapter = lora_forward_flops_per_token(s.model, lora)
        flops_per_token = 2.0 * fl.forward + 3.0 * adapter
    else:
        flops_per_token = fl.model_flops
    gpus = s.gpus
    disaggregated = isinstance(w, GRPOWorkload | PPOWorkload) and w.rollout == "disaggregated"
    if disaggregated:
        gpus += w.rollout_gpus or s.gpus
    tokens = sequences_per_step(s) * w.seq_len  # trained tokens (pairs count twice)
    hbm = s.cluster.gpu.hbm_GB * 1e9
    fit_parts = {"training": mem.estimate.total <= hbm}
    notes: list[str] = []
    if not fit_parts["training"]:
        notes.append(
            f"the training GPUs need {mem.estimate.total / 1e9:,.1f} GB of {hbm / 1e9:g} GB"
        )
    colocated = isinstance(w, GRPOWorkload | PPOWorkload) and w.rollout == "colocated"
    if colocated and mem.rollout_kv_capacity < 1:  # then the one timed sequence overflows HBM
        notes.append(
            "no rollout sequence's KV cache fits beside the training states (timed as one "
            "per replica)"
        )
    res = Result(
        name=s.name,
        stage=w.stage,
        gpus=gpus,
        params_total=float(pc.total_main),
        params_active=float(pc.active_main),
        model_flops_per_token=flops_per_token,
        step_time_s=step_s,
        memory_per_gpu_GB=mem.estimate.as_GB(),
        fits_in_memory=fit_parts["training"],
        time_breakdown_s=breakdown,
    )
    extra: dict[str, object] = {
        "memory_per_model_GB": mem.copies_GB(),
        "fidelity": fidelity or s.simulation.fidelity,
        "network": s.simulation.network,
        "microbatches": n_microbatches(s),
    }
    if lora is not None:
        extra["trainable_params"] = float(lora_counts(s.model, lora).total)
    useful = tokens
    if isinstance(w, SFTWorkload):
        useful = tokens * w.packing_efficiency
        if step_s > 0:
            extra["loss_tokens_per_s"] = useful * (1 - w.prompt_fraction) / step_s
    for ph in phases:
        extra.update(ph.extra if ph.name in ("rollout", "weight_sync") else {})
    dropped = sum(float(ph.extra.get("dropped", 0.0)) for ph in phases)
    offered = sum(float(ph.extra.get("offered", 0.0)) for ph in phases)
    if offered:
        extra["tokens_dropped_fraction"] = dropped / offered
    if disaggregated:
        roll = rollout_gpu_memory(s)
        extra["training_gpus"] = s.gpus
        extra["rollout_gpus"] = gpus - s.gpus
        extra["rollout_memory_per_gpu_GB"] = roll.estimate.as_GB()
        extra["rollout_fits_in_memory"] = fit_parts["rollout"] = roll.fits
        if not roll.fits:  # the KV pool holds what fits, so only zero sequences does not
            notes.append(
                f"the rollout GPUs hold {roll.estimate.weights / 1e9:,.1f} GB of weights and "
                f"no sequence's KV cache fits in {hbm / 1e9:g} GB (timed as one per replica)"
            )
        res.fits_in_memory = all(fit_parts.values())
    if len(fit_parts) > 1 or not res.fits_in_memory:
        extra["fits_in_memory_parts"] = fit_parts
    if notes:
        extra["memory_note"] = "; ".join(notes)
    if step_s > 0:
        res.tokens_per_s = useful / step_s
        res.tokens_per_s_per_gpu = res.tokens_per_s / gpus
        trained = useful * getattr(w, "ppo_epochs", 1) / step_s / gpus  # tokens/s/GPU trained
        recompute = fl.recompute(s.parallel.recompute, s.parallel.recompute_modules)
        for k, v in utilization(s, flops_per_token, recompute, trained).items():
            setattr(res, k, v)
        if w.total_tokens:
            res.gpu_hours = w.total_tokens / res.tokens_per_s * gpus / 3600.0
            res.cost_usd = res.gpu_hours * s.cost.usd_per_gpu_hour
    for k, v in extra.items():
        setattr(res, k, v)
    if trace_path is not None:
        write_trace(_concatenated(phases), trace_path)
    return res


def _concatenated(phases: list[Phase]) -> list[Rank]:
    """The phases' ranks on one time axis (each phase shifted to start where the last ended)."""
    merged: dict[int, Rank] = {}
    offset = 0.0
    for ph in phases:
        for r in ph.ranks:
            into = merged.get(r.gpu)
            if into is None:
                into = merged[r.gpu] = Rank(r.env, r.gpu, r.label)
            into.intervals += [
                (st, f"{ph.name}:{n}", c, a + offset, b + offset) for st, n, c, a, b in r.intervals
            ]
        offset += ph.time_s
    return [merged[g] for g in sorted(merged)]
