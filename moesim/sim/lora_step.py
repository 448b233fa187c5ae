"""LoRA in the simulator: a pretraining pass turned into an adapter step (adapter time in every
layer, frozen-base backward computing input gradients only, gradients/optimizer/all-gathers of
the adapters alone). Used by SFT, DPO, GRPO and PPO with ``workload.lora``."""

from __future__ import annotations

from dataclasses import replace

from moesim.analytic.lora import LoRALayer, lora_counts
from moesim.sim.context import SimContext
from moesim.sim.costmodel import OpWork
from moesim.sim.training_step import Pipeline
from moesim.specs import LoRASpec


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
