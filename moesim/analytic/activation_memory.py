"""Activation memory of training: the bytes one token leaves for the backward in one layer
under each recomputation policy (``activation_bytes_per_token``), the layers whose activations
go to host memory (``offloaded_layers``), and a pipeline stage's peak over its microbatches in
flight (``stage_activation_bytes``); ``moesim.analytic.memory`` adds them to the estimate.
"""

from __future__ import annotations

from moesim.analytic.layout import (
    StageLayout,
)
from moesim.analytic.microbatches import effective_schedule, microbatches_in_flight, n_microbatches
from moesim.specs import (
    DPOWorkload,
    ModelSpec,
    ParallelSpec,
    Scenario,
)

FP32_BYTES = 4.0


# -- activations ------------------------------------------------------------------------------
def activation_bytes_per_token(
    m: ModelSpec,
    moe: bool,
    p: ParallelSpec,
    recompute: str,
    act_bytes: float = 2.0,
    cached_gemm_input_bytes: float | None = None,
) -> float:
    """Bytes autograd keeps for one token through one layer, on one GPU (tp/SP applied).

    none: each norm's input and output; Q, K, V and the attention output (what flash
    attention's backward reads) plus its fp32 log-sum-exp; MLA's latents and up-projections;
    the FFN's gate/up outputs and their activated product. An MoE layer keeps, per routed copy,
    the permuted input, the expert's hidden activations and its output (needed for the gate
    weights' gradient), plus fp32 router logits and probabilities.

    selective: what ``p.recomputed_modules`` names is recomputed in the backward pass instead
    of kept (Megatron-Core's ``recompute_modules``; by default {layernorm, moe_act,
    mla_up_proj}, the set DeepSeek-V3 §3.2.3 describes): ``layernorm`` drops the norm
    outputs, ``moe_act`` the activation functions' outputs, ``mla_up_proj`` MLA's up-projected
    Q/K/V, ``core_attn`` the attention core's log-sum-exp (Q, K, V are its checkpoint inputs
    and its output the projection's input, so both stay), ``mlp`` a dense layer's whole FFN,
    ``moe`` an MoE layer's router, routed and shared experts, ``shared_experts`` the shared
    experts. What a module's recomputation reads is kept by its neighbours' rules.

    full: only the layer input.

    ``cached_gemm_input_bytes``: the inputs of the attention output projection and of the
    experts (dispatched tokens, SwiGLU inputs) kept in ``precision.activation_storage``
    (fp8 as DeepSeek-V3 §3.3.2, "low-precision storage"); default: ``act_bytes``.
    """
    d = m.d_model
    a, c = act_bytes, cached_gemm_input_bytes or act_bytes
    sp = p.tp if p.sequence_parallel else 1
    if recompute == "full":
        return a * d / sp
    drop = p.recomputed_modules if recompute == "selective" else frozenset()
    norms = 1 if "layernorm" in drop else 2  # norm input (and output unless recomputed)
    # attention block
    seq_sharded = norms * d * a
    if m.mla is not None:
        ml = m.mla
        seq_sharded += ((ml.q_lora_rank or 0) + ml.kv_lora_rank + ml.qk_rope_head_dim) * a
        up = m.q_dim + m.n_heads * (ml.qk_nope_head_dim + ml.qk_rope_head_dim)
        up += m.n_heads * ml.v_head_dim
        head_sharded = (0 if "mla_up_proj" in drop else up) * a + m.attn_out_dim * c
    else:
        head_sharded = (m.q_dim + 2 * m.kv_dim) * a + m.attn_out_dim * c
    lse = 0.0 if "core_attn" in drop else FP32_BYTES * m.n_heads / p.tp
    total = seq_sharded / sp + head_sharded / p.tp + lse
    # FFN block: its norm
    total += norms * d * a / sp
    gated = m.ffn_gated
    kept_inputs = 2 if gated else 1  # gate and up outputs (or the pre-activation)
    kept_act = 0 if "moe_act" in drop else 1  # the activated product / post-activation
    if not moe or m.moe is None:
        if "mlp" in drop:
            return total
        return total + (kept_inputs + kept_act) * m.ffn_hidden * a / p.tp
    if "moe" in drop:
        return total
    e = m.moe
    router = 2 * FP32_BYTES * e.n_routed_experts / sp
    hidden = e.expert_hidden / p.etp
    per_copy = d * c + kept_inputs * hidden * c + kept_act * hidden * a + d * a
    routed = e.top_k * per_copy / sp
    shared = (kept_inputs + kept_act) * e.n_shared_experts * e.shared_hidden * a / p.tp
    if "shared_experts" in drop:
        shared = 0.0
    return total + router + routed + shared


def offloaded_layers(p: ParallelSpec, stage: StageLayout) -> list[int]:
    """The layers whose activations ``parallel.activation_offload_layers`` sends to host
    memory on this rank: the first ones of each model chunk (Transformer Engine offloads the
    first ``num_layers`` of a chunk and needs fewer than the chunk holds)."""
    n = p.activation_offload_layers
    if n == 0:
        return []
    chunks = [c for c in stage.chunks if c]
    smallest = min((len(c) for c in chunks), default=0)
    if n >= smallest:
        raise ValueError(
            f"parallel.activation_offload_layers ({n}) must be below the decoder layers of "
            f"every model chunk (pipeline rank {stage.rank} has a chunk of {smallest}): "
            f"lower it to at most {max(smallest - 1, 0)}"
        )
    return [i for c in chunks for i in c[:n]]


def stage_activation_bytes(
    s: Scenario, stage: StageLayout, seq_len: int, mirror: StageLayout | None = None
) -> float:
    """Activations one GPU of ``stage`` holds at its peak in a training step. ``mirror``: the
    second position a DualPipe rank holds; its pp+1 microbatches in flight are counted at the
    mean of the two positions' activations (they mix both)."""
    m, p = s.model, s.parallel
    act = s.precision.activation_bytes
    cached = s.precision.cached_gemm_input_bytes
    pairs = 2 if isinstance(s.workload, DPOWorkload) else 1
    tokens = p.microbatch_size * pairs * seq_len / p.cp
    positions = [stage] if mirror is None else [stage, mirror]
    layers = [(i, st) for st in positions for i in st.layers]
    kept = {
        i: activation_bytes_per_token(m, i in st.moe_layers, p, p.recompute, act, cached)
        for i, st in layers
    }
    # offloaded layers' activations wait in host memory; one layer's stays as the copy's buffer
    offloaded = [i for st in positions for i in offloaded_layers(p, st)]
    per_mb = sum(b for i, b in kept.items() if i not in offloaded) / len(positions)
    m_count = n_microbatches(s)
    in_flight = microbatches_in_flight(p, m_count)
    if stage.rank > 0 and effective_schedule(p, m_count) == "1f1b":
        in_flight = min(in_flight, float(p.pp - stage.rank))
    total = per_mb * tokens * in_flight
    if offloaded:
        total += max(kept[i] for i in offloaded) * tokens
    if p.recompute == "full" and layers:
        # the layer being recomputed holds its full activations during its backward
        worst = max(
            activation_bytes_per_token(m, i in st.moe_layers, p, "none", act, cached)
            for i, st in layers
        )
        total += worst * tokens
    if any(st.has_lm_head or st.has_mtp for st in positions):
        total += tokens * m.vocab_size / p.tp * FP32_BYTES  # fp32 logits of one microbatch
    return total
