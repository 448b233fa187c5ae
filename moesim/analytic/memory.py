"""Memory per GPU: weights, gradients, optimizer states, activations, KV cache, other.

Sources for each rule:
- Model states (ZeRO, Rajbhandari et al. 2020, §3): bf16 weights 2 B, bf16 grads 2 B, Adam with
  fp32 master weights 12 B per parameter; ZeRO-1 shards the optimizer over the data-parallel
  group, ZeRO-2 also the gradients, ZeRO-3 also the weights. Non-expert parameters shard over
  dp·cp (Megatron's distributed optimizer); routed experts over the expert-data-parallel group.
- Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation", §4): counted tensor
  by tensor for a modern block without dropout and with flash attention (no s² term): what
  autograd saves for the backward pass. Tensor and sequence parallelism divide it by tp; the
  first pipeline stage holds ``min(pp, m)`` microbatches in flight under 1F1B, ``pp + (pp−1)/v``
  under interleaving (Megatron-Core warm-up counts), all m under GPipe, pp+1 under DualPipe
  (DeepSeek-V3 report, Table 2), whose ranks also hold two positions' parameters (Table 2:
  2x, and their gradients and optimizer states).
- KV cache: 2·kv_heads·head_dim per token per layer for MHA/GQA; the compressed latent plus
  the RoPE key for MLA (DeepSeek-V2 §2.1.2), which tensor parallelism does not shard.

The worst pipeline stage is reported (the first holds the most activations, the last the
logits); a configuration that does not fit is a result, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from moesim.analytic.activation_memory import stage_activation_bytes
from moesim.analytic.layout import (
    StageLayout,
    dualpipe_positions,
    stage_layouts,
)
from moesim.analytic.microbatches import effective_schedule, n_microbatches
from moesim.analytic.params import LayerParams, ParamCounts, count_params
from moesim.specs import (
    BYTES_PER_ELEMENT,
    InferenceWorkload,
    ModelSpec,
    MoELayerWorkload,
    ParallelSpec,
    Precision,
    Scenario,
)

FP32_BYTES = 4.0


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU on the worst pipeline stage."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    kv_cache: float
    other: float
    stage: int = 0
    drafter: float = 0.0  # serving: a speculative drafter's weights (its KV is in kv_cache)

    @property
    def total(self) -> float:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.kv_cache
            + self.other
            + self.drafter
        )

    def as_GB(self) -> dict[str, float]:
        """The contract's ``memory_per_gpu_GB`` (1 GB = 1e9 bytes); ``drafter`` only when a
        speculative drafter is held."""
        keys = ("weights", "gradients", "optimizer", "activations", "kv_cache", "other")
        out = {k: getattr(self, k) / 1e9 for k in keys}
        if self.drafter:
            out["drafter"] = self.drafter / 1e9
        out["total"] = self.total / 1e9
        return out


# -- parameters held by one GPU -------------------------------------------------------------
@dataclass(frozen=True)
class StageParams:
    """Parameters one GPU of a pipeline stage holds before ZeRO sharding."""

    non_expert: float  # sharded by tp, replicated over dp·cp
    expert: float  # sharded by ep·etp, replicated over edp

    @property
    def total(self) -> float:
        return self.non_expert + self.expert


def _layer(counts: ParamCounts, m: ModelSpec, global_index: int) -> LayerParams:
    if global_index < m.n_encoder_layers:
        return counts.encoder_layers[global_index]
    return counts.decoder_layers[global_index - m.n_encoder_layers]


def stage_params(
    m: ModelSpec, p: ParallelSpec, stage: StageLayout, counts: ParamCounts | None = None
) -> StageParams:
    """``counts``: ``count_params(m)`` when the caller has it (one count for every stage)."""
    counts = count_params(m) if counts is None else counts
    layers = [_layer(counts, m, i) for i in stage.layers]
    non_expert = sum(x.non_expert for x in layers)
    expert = sum(x.routed_experts for x in layers)
    if stage.has_embedding:
        non_expert += counts.embedding
    # a tied head needs its own copy when it sits on another stage than the embedding
    tied_copy = counts.embedding if m.tie_embeddings else 0
    if stage.has_lm_head:
        non_expert += counts.lm_head + counts.final_norm
        non_expert += tied_copy if not stage.has_embedding else 0
    if stage.has_mtp:
        # MTP layers on a rank without the head need the output head's weights for their
        # logits: counted as a copy (an assumption; the embedding copy Megatron-Core's
        # GPTModel also builds for MTP is not counted, with or without a layout)
        if not stage.has_lm_head:
            non_expert += counts.lm_head + (tied_copy if not stage.has_embedding else 0)
        mtp_expert = 0
        if m.moe is not None:
            mtp_expert = stage.mtp_layers * counts.decoder_layers[-1].routed_experts
        non_expert += counts.mtp * stage.mtp_layers / max(m.mtp_depth, 1) - mtp_expert
        expert += mtp_expert
    return StageParams(non_expert=non_expert / p.tp, expert=expert / (p.ep * p.etp))


def model_state_bytes(
    params: StageParams, p: ParallelSpec, prec: Precision, trainable: bool = True
) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes per GPU under ZeRO stage ``p.zero_stage``."""
    dp_group = p.dp_size * p.cp
    edp = p.edp if params.expert else 1
    z = p.zero_stage

    def shard(n_non_expert: float, n_expert: float, bytes_per: float, sharded: bool) -> float:
        if not sharded:
            return (n_non_expert + n_expert) * bytes_per
        return (n_non_expert / dp_group + n_expert / edp) * bytes_per

    weights = shard(params.non_expert, params.expert, prec.param_bytes, z >= 3)
    if not trainable:
        return weights, 0.0, 0.0
    grads = shard(params.non_expert, params.expert, prec.grad_bytes, z >= 2)
    optim = shard(params.non_expert, params.expert, prec.optimizer_bytes_per_param, z >= 1)
    return weights, grads, optim


# -- KV cache -----------------------------------------------------------------------------------
def kv_cache_bytes_per_token(m: ModelSpec, p: ParallelSpec, prec: Precision) -> float:
    """KV-cache bytes per cached token on one GPU, over the layers of one pipeline stage
    (layers split evenly), with attention heads sharded by tp."""
    b = BYTES_PER_ELEMENT[prec.kv_cache]
    layers = (m.n_layers + m.n_encoder_layers) / p.pp
    if m.mla is not None:
        per_layer = (m.mla.kv_lora_rank + m.mla.qk_rope_head_dim) * b  # replicated over tp
    else:
        per_layer = 2 * m.kv_dim * b / min(p.tp, m.kv_heads)
    return layers * per_layer


# -- the whole estimate -------------------------------------------------------------------------
def reserve_bytes(s: Scenario) -> float:
    """HBM the framework's tensors cannot use (``cluster.gpu_memory_reserve_GB``): CUDA
    context, library workspaces, allocator and NCCL buffers."""
    return s.cluster.gpu_memory_reserve_GB * 1e9


def _other_bytes(s: Scenario, tokens_per_mb: float) -> float:
    m = s.model
    other = reserve_bytes(s)
    if m.moe is not None and s.parallel.ep > 1:
        # dispatch and combine receive buffers for one microbatch
        other += 2 * tokens_per_mb * m.moe.top_k * m.d_model * s.precision.dispatch_bytes
    if s.parallel.dp_size > 1 and not isinstance(s.workload, InferenceWorkload):
        other += 2 * s.simulation.dp_bucket_MB * 1e6  # two gradient buckets in flight
    return other


def serving_step_tokens(w: InferenceWorkload, batch: int) -> float:
    """Tokens of a serving engine's largest step, what its activations and all-to-all buffers
    hold: prompts are prefilled in chunks of at most ``max_prefill_tokens`` (vLLM's
    max_num_batched_tokens) per step, and a decode step has one token per sequence. vLLM sizes
    the same memory by a profile run of max_num_batched_tokens tokens before it gives the rest to
    the KV cache (vllm/v1/worker/gpu_worker.py, ``determine_available_memory``:
    ``profile_run(max_num_tokens)``, then gpu_memory_utilization × HBM minus the peak)."""
    return float(max(min(batch * w.mean_prompt_len, w.max_prefill_tokens), batch))


def memory_per_gpu(s: Scenario, per_stage: list[MemoryEstimate] | None = None) -> MemoryEstimate:
    """Per-GPU memory of the worst pipeline stage of a scenario; ``per_stage``: its
    ``memory_per_stage`` when the caller has it (a result reports both)."""
    if isinstance(s.workload, MoELayerWorkload):
        return _moe_layer_memory(s)
    return max(memory_per_stage(s) if per_stage is None else per_stage, key=lambda e: e.total)


def memory_per_stage(s: Scenario) -> list[MemoryEstimate]:
    """Per-GPU memory of every pipeline rank (``stage`` = the rank), in rank order. Under
    DualPipe rank r and its mirror pp−1−r hold the same two positions and the same memory."""
    m, p, w = s.model, s.parallel, s.workload
    stages = stage_layouts(m, p)
    inference = isinstance(w, InferenceWorkload)
    dual = not inference and effective_schedule(p, n_microbatches(s)) == "dualpipe"
    counts = count_params(m)
    out: list[MemoryEstimate] = []
    for stage in stages:
        if dual and stage.rank >= p.pp // 2:  # the mirror of a rank already estimated
            out.append(replace(out[p.pp - 1 - stage.rank], stage=stage.rank))
            continue
        mirror = stages[dualpipe_positions(p.pp, stage.rank)[1]] if dual else None
        # a serving engine does not load the MTP modules as part of the model (vLLM's
        # DeepseekV2ForCausalLM.load_weights skips them: "skip spec decode layers for main
        # model"); a speculative MTP drafter adds them back (moesim.sim.serving_memory)
        held = replace(stage, mtp_layers=0) if inference else stage
        params = stage_params(m, p, held, counts)
        if mirror is not None:  # DualPipe: two positions, two copies of parameters
            other = stage_params(m, p, mirror, counts)
            params = StageParams(params.non_expert + other.non_expert, params.expert + other.expert)
        if inference:
            wbytes = BYTES_PER_ELEMENT[s.precision.weights_inference]
            weights, grads, optim = params.total * wbytes, 0.0, 0.0
            batch = w.batch_size or w.max_batch_size
            kv = kv_cache_bytes_per_token(m, p, s.precision) * batch * w.seq_len
            tokens_per_mb = serving_step_tokens(w, batch)
            acts = tokens_per_mb / p.cp * m.d_model * 2 * s.precision.activation_bytes
        else:
            weights, grads, optim = model_state_bytes(params, p, s.precision)
            seq = w.seq_len
            kv = 0.0
            acts = stage_activation_bytes(s, stage, seq, mirror)
            tokens_per_mb = p.microbatch_size * seq / p.cp / p.tp
        est = MemoryEstimate(
            weights=weights,
            gradients=grads,
            optimizer=optim,
            activations=acts,
            kv_cache=kv,
            other=_other_bytes(s, tokens_per_mb),
            stage=stage.rank,
        )
        out.append(est)
    return out


def _moe_layer_memory(s: Scenario) -> MemoryEstimate:
    """One MoE layer timed alone: its weights and the activations of its tokens."""
    m, p, w = s.model, s.parallel, s.workload
    assert isinstance(w, MoELayerWorkload) and m.moe is not None
    counts = count_params(m)
    layer = next(x for x in counts.decoder_layers if x.routed_experts)
    params = StageParams(
        non_expert=(layer.non_expert - layer.attention) / p.tp,
        expert=layer.routed_experts / (p.ep * p.etp),
    )
    weights, grads, optim = model_state_bytes(params, p, s.precision)
    if w.passes == "forward":
        grads = optim = 0.0
    act = s.precision.activation_bytes
    e = m.moe
    per_token = act * e.top_k * (2 * m.d_model + 3 * e.expert_hidden / p.etp)
    return MemoryEstimate(
        weights=weights,
        gradients=grads,
        optimizer=optim,
        activations=per_token * w.tokens_per_gpu,
        kv_cache=0.0,
        other=_other_bytes(s, float(w.tokens_per_gpu)),
    )


def fits(s: Scenario, est: MemoryEstimate | None = None) -> bool:
    """The worst stage fits in HBM; ``est``: ``memory_per_gpu(s)`` when the caller has it."""
    return (memory_per_gpu(s) if est is None else est).total <= s.cluster.gpu.hbm_GB * 1e9


#: what shrinks each part of a training step's memory, for the note of a layout that does not fit
_SHRINKS = {
    "activations": "parallel.recompute_modules (e.g. [moe]) or recompute: full, "
    "precision.activation_storage: fp8, a smaller microbatch_size, or more tp/cp/pp",
    "optimizer": "a higher zero_stage, precision.optimizer_states: bf16, or more dp/ep",
    "gradients": "zero_stage 2 or 3, precision.grads: bf16, or more pp/tp/ep",
    "weights": "zero_stage 3, or more pp/tp/ep",
}


def memory_note(s: Scenario, est: MemoryEstimate) -> str | None:
    """Why a training layout does not fit: by how much, its largest part and what shrinks it;
    None when it fits."""
    hbm = s.cluster.gpu.hbm_GB * 1e9
    if est.total <= hbm:
        return None
    parts = {k: getattr(est, k) for k in _SHRINKS}
    worst = max(parts, key=parts.__getitem__)
    return (
        f"needs {est.total / 1e9:,.1f} GB of {hbm / 1e9:g} GB per GPU (stage {est.stage}); "
        f"the largest part is {worst} at {parts[worst] / 1e9:,.1f} GB "
        f"({parts[worst] / est.total:.0%}): {_SHRINKS[worst]}"
    )
