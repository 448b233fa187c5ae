"""The phases of a GRPO/PPO/DPO step other than the rollout: forward-only and training passes
(``pipeline_phase``), the weight sync into the rollout engine, GAE, and the colocated engines'
memory moves (sleep/wake, optimizer offload). Each returns a ``Phase``: its time on the GPUs
that run it and the usual compute/comm parts.

**Weight sync** (``analytic.post_training.weight_sync_bytes`` says what moves): colocated, a
ZeRO-3 all-gather of the training shard, a memory-bound pass that reads it (``precision.params``)
and writes the engine's shard (``weights_inference``: fp8/int4 quantize in this pass), then the
part of the rollout shard a GPU does not hold over NVLink (over the NIC when its sources span
nodes) — nothing when the rollout layout is training's or finer. Disaggregated: a quantization
pass on the training GPUs when ``weights_inference`` is not ``params``, then every rollout GPU
receives its whole shard in ``weights_inference`` bytes over its share of the NICs (a pipelined
broadcast: the training GPUs send one copy between them, rollout replicas forward it).

**Memory moves** (colocated only; vLLM sleep mode, docs.vllm.ai/en/latest/features/sleep_mode:
"Level 1 sleep will offload the model weights and discard the KV cache ... Level 2 sleep will
discard both the model weights and the KV cache"). Each GPU copies over its own PCIe link
(``gpu.pcie_GBps`` × the profile's ``pcie`` fraction), one direction at a time:

- ``engine_wake`` (before the weight sync): level 1 brings the engine's weights back from host
  memory (its weight bytes host→device); level 2 has nothing to bring (the sync refills the
  weights); the KV pool is reallocated, not copied (0 s).
- ``engine_sleep`` (after the rollout): level 1 copies the weights device→host; level 2 frees.
- ``optimizer_offload`` (before the rollout) and ``optimizer_reload`` (before training): the
  trained models' optimizer states device→host and back (verl's ``optimizer_offload``; NeMo
  RL's colocated refit offloads the optimizer before the refit and restores it after).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from moesim.analytic.flops import token_flops
from moesim.analytic.lora import lora_forward_flops_per_token
from moesim.analytic.microbatches import n_microbatches, sequences_per_step
from moesim.analytic.params import count_params
from moesim.analytic.post_training import post_training_memory, weight_sync_bytes
from moesim.analytic.rollout_memory import inference_weight_bytes, shard_params
from moesim.sim.breakdown import COMM_CATEGORIES
from moesim.sim.context import SimContext
from moesim.sim.costmodel import OpWork
from moesim.sim.dualpipe_mirror import result_ranks
from moesim.sim.engine import Rank, run_to_completion
from moesim.sim.lora_step import apply_lora
from moesim.sim.run import build_context, simulate_pass
from moesim.sim.training_step import pipeline_pass
from moesim.specs import (
    BYTES_PER_ELEMENT,
    GRPOWorkload,
    LoRASpec,
    ModelSpec,
    PPOWorkload,
    Scenario,
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
    flops_per_gpu: float = 0.0  # model FLOPs one GPU of the phase does (for its MFU)
    hbm_bytes_per_gpu: float = 0.0  # HBM bytes one GPU must move at least (for its MBU)
    side: str = "training"  # the GPUs it runs on: training, or rollout (disaggregated)


def empty_parts() -> dict[str, float]:
    return dict.fromkeys(PART_KEYS, 0.0)


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
        return ctx, result_ranks(ctx)

    ctx, ranks, step, parts, _ = simulate_pass(s, run)
    parts = {k: repeat * parts[k] for k in PART_KEYS}
    extra = {"dropped": ctx.dropped_copies, "offered": ctx.offered_copies}
    flops, nbytes = pass_work_per_gpu(s, train, lora)
    return Phase(name, repeat * step, parts, ranks, extra, repeat * flops, repeat * nbytes)


def pass_work_per_gpu(s: Scenario, train: bool, lora: LoRASpec | None) -> tuple[float, float]:
    """(model FLOPs, weight bytes read) of one pass over the step's sequences on one GPU.

    FLOPs: tokens × the forward (forward-only), × 3 forward (training), × 2 forward + 3 × the
    adapters' forward with LoRA (the frozen base computes no weight gradients) — the MFU
    convention, recomputation not counted. Bytes: every microbatch reads the GPU's weight shard
    (tp/pp/ep-sharded; ZeRO-3 gathers it whole first) once forward and once more backward (the
    input gradients): a floor on HBM traffic, activations not counted."""
    fl = token_flops(s.model, s.workload.seq_len)
    per_token = fl.forward
    if train:
        per_token = 3.0 * fl.forward
        if lora is not None:
            per_token = 2.0 * fl.forward + 3.0 * lora_forward_flops_per_token(s.model, lora)
    elif lora is not None:
        per_token += lora_forward_flops_per_token(s.model, lora)
    tokens = sequences_per_step(s) * s.workload.seq_len
    dense, expert = shard_params(s, s.parallel)
    reads = n_microbatches(s) * (2 if train else 1)
    nbytes = reads * (dense + expert) * s.precision.param_bytes
    return tokens * per_token / s.gpus, nbytes


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
        total_s = convert_s + gather_s + reshard_s
        return Phase("weight_sync", total_s, parts, extra=extra, hbm_bytes_per_gpu=convert_bytes)
    # disaggregated: quantize on the training GPUs (when the engine's precision differs), then a
    # pipelined broadcast: each rollout GPU receives its shard over its share of the NICs while
    # the training GPUs send one copy of the model between them
    quant_s = quant_bytes = 0.0
    if wb != pb:
        quant_bytes = sync.train_params * (pb + wb)
        quant_s = cm.time_s(OpWork("weight_quantize", "memory_bound", 0.0, quant_bytes))
    send = count_params(s.model).total * wb / s.gpus
    transfer_s = max(sync.moved_bytes, send) / nic_Bps + inter.latency_us * 1e-6
    parts["compute"] = quant_s
    parts["exposed_comm"] = transfer_s
    extra["weight_sync_parts_s"] = {"quantize": quant_s, "transfer": transfer_s}
    total_s = quant_s + transfer_s
    return Phase("weight_sync", total_s, parts, extra=extra, hbm_bytes_per_gpu=quant_bytes)


def gae_phase(s: Scenario, ctx_s: SimContext) -> Phase:
    """Advantages and returns: a backward scan over rewards and values (fp32), memory-bound."""
    w = s.workload
    seqs_per_gpu = w.global_batch / (s.parallel.dp_size * s.parallel.cp)
    # rewards, values in; advantages, returns out (fp32), over the mean response
    nbytes = 4 * 4.0 * seqs_per_gpu * w.response_tokens
    t = ctx_s.cm.time_s(OpWork("gae", "memory_bound", 0.0, nbytes))
    parts = dict.fromkeys(PART_KEYS, 0.0)
    parts["compute"] = t
    return Phase("gae", t, parts, hbm_bytes_per_gpu=nbytes)


def pcie_Bps(s: Scenario, ctx_s: SimContext) -> float:
    """Achieved bytes/s of one GPU's host link, one direction."""
    return s.cluster.gpu.pcie_GBps * 1e9 * ctx_s.cm.link_fraction("pcie")


def memory_move_phases(s: Scenario, ctx_s: SimContext) -> dict[str, Phase]:
    """The colocated engines' host copies of a step, by phase name (see the module docstring);
    empty when the scenario moves nothing."""
    w = s.workload
    assert isinstance(w, GRPOWorkload | PPOWorkload)
    if w.rollout != "colocated":
        return {}
    bps = pcie_Bps(s, ctx_s)
    out: dict[str, Phase] = {}

    def move(name: str, nbytes: float) -> None:
        parts = empty_parts()
        parts["exposed_comm"] = t = nbytes / bps
        out[name] = Phase(name, t, parts, extra={"host_copy_GB_per_gpu": nbytes / 1e9})

    if w.offload_optimizer:
        nbytes = post_training_memory(s).offloaded_optimizer
        move("optimizer_offload", nbytes)
        move("optimizer_reload", nbytes)
    if w.sleep_level >= 1:
        weights = inference_weight_bytes(s) if w.sleep_level == 1 else 0.0
        move("engine_wake", weights)
        move("engine_sleep", weights)
    return out
