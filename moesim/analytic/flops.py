"""FLOPs per token: every GEMM, attention's quadratic term, the router, recomputation.

Conventions (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, App. B; Korthikanti et al. 2022):
a multiply-accumulate is 2 FLOPs; backward is 2× forward; embedding lookups, norms and
element-wise ops are not counted (they are memory-bound, and ``FlopCounterMode`` does not count
them either). Attention scores cost 2·h·d_qk·ctx (QKᵀ) + 2·h·d_v·ctx (AV) per token, where
ctx is the number of keys attended: (s+1)/2 on average under a causal mask, s without one.

An encoder-decoder (T5/Switch) token is one source token through the encoder plus one target
token through the decoder, with source and target both ``seq_len`` long.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.analytic.params import attention_params, ffn_params, router_params
from moesim.specs import ModelSpec

Recompute = str  # "none" | "selective" | "full"


@dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs per token of one layer, split the way the simulator schedules them."""

    attention_proj: float  # Q/K/V/O projections (MLA's low-rank factors)
    attention_core: float  # QKᵀ and AV
    dense_ffn: float
    router: float
    shared_experts: float
    routed_experts: float  # top_k experts

    @property
    def total(self) -> float:
        return (
            self.attention_proj
            + self.attention_core
            + self.dense_ffn
            + self.router
            + self.shared_experts
            + self.routed_experts
        )


@dataclass(frozen=True)
class TokenFlops:
    """FLOPs per token at one sequence length."""

    forward: float
    layers: list[LayerFlops]
    lm_head: float
    mtp: float

    @property
    def backward(self) -> float:
        return 2.0 * self.forward

    @property
    def model_flops(self) -> float:
        """Forward + backward: the numerator of MFU (recomputation not counted)."""
        return 3.0 * self.forward

    def recompute(self, mode: Recompute) -> float:
        """Extra forward FLOPs that recomputation adds to the backward pass.

        selective: the activation functions and the attention core are recomputed; only the
        core is a GEMM-class cost (Korthikanti et al. §5: recompute the parts that are cheap in
        FLOPs and large in memory). full: the whole forward of every layer again.
        """
        if mode == "none":
            return 0.0
        if mode == "selective":
            return sum(x.attention_core for x in self.layers)
        if mode == "full":
            return sum(x.total for x in self.layers)
        raise ValueError(f"recompute must be none|selective|full, got {mode!r}")

    def hardware_flops(self, mode: Recompute) -> float:
        """FLOPs the GPUs actually execute per token in training (HFU numerator)."""
        return self.model_flops + self.recompute(mode)


def attention_core_flops(m: ModelSpec, context: float) -> float:
    """QKᵀ and AV for one query token attending ``context`` keys."""
    if m.mla is not None:
        d_qk = m.mla.qk_nope_head_dim + m.mla.qk_rope_head_dim
        d_v = m.mla.v_head_dim
    else:
        d_qk = d_v = m.head_size
    return 2.0 * m.n_heads * (d_qk + d_v) * context


def _attention_proj_flops(m: ModelSpec) -> float:
    """2 FLOPs per weight of the projections (norm and bias weights are not GEMM work)."""
    weights = attention_params(m)
    if m.mla is not None:
        weights -= m.mla.kv_lora_rank + (m.mla.q_lora_rank or 0)  # latent RMSNorms
    else:
        weights -= (m.q_dim + 2 * m.kv_dim) if m.attention_bias else 0
        weights -= 2 * m.head_size if m.qk_norm else 0
    return 2.0 * weights


def layer_flops(m: ModelSpec, moe: bool, context: float, cross_context: float = 0.0) -> LayerFlops:
    proj = _attention_proj_flops(m)
    core = attention_core_flops(m, context)
    if cross_context:
        proj *= 2
        core += attention_core_flops(m, cross_context)
    if not moe or m.moe is None:
        return LayerFlops(proj, core, 2.0 * ffn_params(m, m.ffn_hidden), 0.0, 0.0, 0.0)
    e = m.moe
    shared = 2.0 * e.n_shared_experts * ffn_params(m, e.shared_hidden)
    if e.shared_expert_gate and e.n_shared_experts:
        shared += 2.0 * m.d_model
    return LayerFlops(
        attention_proj=proj,
        attention_core=core,
        dense_ffn=0.0,
        router=2.0 * router_params(m),  # noisy top-k's noise GEMM runs in training
        shared_experts=shared,
        routed_experts=2.0 * e.top_k * ffn_params(m, e.expert_hidden),
    )


def token_flops(m: ModelSpec, seq_len: int | None = None, causal: bool = True) -> TokenFlops:
    """Forward FLOPs per token for sequences of ``seq_len`` (default: the model's)."""
    s = seq_len or m.max_seq_len
    ctx = (s + 1) / 2.0 if causal else float(s)
    enc = m.n_encoder_layers > 0
    layers = [
        layer_flops(m, m.is_moe_layer(i), ctx, cross_context=float(s) if enc else 0.0)
        for i in range(m.n_layers)
    ]
    # the encoder attends bidirectionally over the source
    layers += [
        layer_flops(m, m.is_moe_encoder_layer(i), float(s)) for i in range(m.n_encoder_layers)
    ]
    lm_head = 2.0 * m.vocab_size * m.d_model
    mtp = 0.0
    if m.mtp_depth:
        block = layer_flops(m, m.is_moe, ctx).total
        mtp = m.mtp_depth * (2.0 * 2 * m.d_model * m.d_model + block + lm_head)
    forward = sum(x.total for x in layers) + lm_head + mtp
    return TokenFlops(forward=forward, layers=layers, lm_head=lm_head, mtp=mtp)


def model_flops_per_token(m: ModelSpec, seq_len: int | None = None) -> float:
    """Forward + backward FLOPs per token (the DESIGN.md contract of ``moesim inspect``)."""
    return token_flops(m, seq_len).model_flops
