"""FLOPs per token: every GEMM, attention's quadratic term, the router, recomputation.

Conventions (Kaplan et al. 2020; PaLM, Chowdhery et al. 2022, App. B; Korthikanti et al. 2022):
a multiply-accumulate is 2 FLOPs; backward is 2× forward; embedding lookups, norms and
element-wise ops are not counted (they are memory-bound, and ``FlopCounterMode`` does not count
them either). Attention scores cost 2·h·d_qk·ctx (QKᵀ) + 2·h·d_v·ctx (AV) per token, where
ctx is the number of keys attended: (s+1)/2 on average under a causal mask, s without one.

An encoder-decoder (T5/Switch) token is one source token through the encoder plus one target
token through the decoder, with source and target both ``seq_len`` long.

Recomputation (``TokenFlops.recompute``) repeats in the backward pass exactly what
``moesim.analytic.memory`` does not keep: the whole layer forward under ``full``; under
``selective`` the norm outputs (free in FLOPs, like every norm here), the activation-function
outputs and MLA's up-projections (Megatron-Core's ``recompute_modules`` {layernorm, mlp/moe_act,
mla_up_proj}, DeepSeek-V3 §3.2.3). Element-wise work left out of the forward count is counted in
the recompute, one FLOP per element per op (the activation, and the gating product of a gated
FFN), as DeepSpeed's flops profiler counts activations: it is tiny next to the GEMMs, but it is
the part of the recompute that dense models have.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from moesim.analytic.params import attention_params, ffn_params, router_params
from moesim.specs import SELECTIVE_MODULES, ModelSpec

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
    # what selective recomputation repeats (not part of ``total``: mla_up_proj is already in
    # attention_proj, and element-wise work is outside the forward count)
    mla_up_proj: float = 0.0  # MLA's W_UQ (or W_Q), W_UK and W_UV GEMMs
    activation: float = 0.0  # element-wise: activation function (and gating product) outputs

    @property
    def selective_recompute(self) -> float:
        """Forward FLOPs that ``recompute: selective`` repeats with its default modules."""
        return self.recompute_flops(SELECTIVE_MODULES)

    def recompute_flops(self, modules: frozenset[str]) -> float:
        """Forward FLOPs this layer repeats in the backward pass when ``modules`` (Megatron's
        ``recompute_modules``) are recomputed: ``mla_up_proj`` and ``core_attn`` their GEMMs,
        ``moe_act`` the activation functions, ``shared_experts`` the shared experts' GEMMs,
        ``mlp`` (a dense layer) / ``moe`` (an MoE layer) the whole FFN block; ``layernorm``
        costs no FLOPs (norms are not counted, see the module docstring)."""
        f = self.mla_up_proj if "mla_up_proj" in modules else 0.0
        f += self.attention_core if "core_attn" in modules else 0.0
        whole_ffn = "moe" in modules if self.routed_experts > 0 else "mlp" in modules
        if whole_ffn:
            ffn = self.dense_ffn + self.router + self.shared_experts + self.routed_experts
            return f + ffn + self.activation
        f += self.shared_experts if "shared_experts" in modules else 0.0
        return f + (self.activation if "moe_act" in modules else 0.0)

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

    def recompute(self, mode: Recompute, modules: Iterable[str] | None = None) -> float:
        """Extra forward FLOPs that recomputation adds to the backward pass, per token.

        selective: what ``activation_memory.activation_bytes_per_token`` drops under it, recomputed:
        ``modules`` (``ParallelSpec.recompute_modules``), by default norm outputs (0 FLOPs),
        activation-function outputs and MLA's up-projected Q/K/V. The attention core is not
        among them by default: memory keeps Q, K, V, the output and the log-sum-exp, all that
        flash attention's backward reads. full: the whole forward of every layer again.
        """
        if mode == "none":
            return 0.0
        if mode == "selective":
            chosen = frozenset(modules) if modules else SELECTIVE_MODULES
            return sum(x.recompute_flops(chosen) for x in self.layers)
        if mode == "full":
            return sum(x.total for x in self.layers)
        raise ValueError(f"recompute must be none|selective|full, got {mode!r}")

    def hardware_flops(self, mode: Recompute, modules: Iterable[str] | None = None) -> float:
        """FLOPs the GPUs actually execute per token in training (HFU numerator)."""
        return self.model_flops + self.recompute(mode, modules)


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


def mla_up_proj_flops(m: ModelSpec) -> float:
    """MLA's up-projections of one token: Q from its latent (W_UQ; the full W_Q when there is
    no query compression), the per-head keys (W_UK) and values (W_UV) from the KV latent. The
    RoPE key is shared by the heads: a copy, no GEMM."""
    if m.mla is None:
        return 0.0
    a = m.mla
    q = (a.q_lora_rank or m.d_model) * m.q_dim
    kv = a.kv_lora_rank * m.n_heads * (a.qk_nope_head_dim + a.v_head_dim)
    return 2.0 * (q + kv)


def activation_flops(m: ModelSpec, hidden_elements: float) -> float:
    """Element-wise FLOPs making ``hidden_elements`` activation outputs: one for the function
    (DeepSpeed flops profiler: SiLU/GELU/ReLU cost numel), one more for a gated FFN's product."""
    return (2.0 if m.ffn_gated else 1.0) * hidden_elements


def layer_flops(m: ModelSpec, moe: bool, context: float, cross_context: float = 0.0) -> LayerFlops:
    proj = _attention_proj_flops(m)
    core = attention_core_flops(m, context)
    if cross_context:
        proj *= 2
        core += attention_core_flops(m, cross_context)
    up = mla_up_proj_flops(m)
    if not moe or m.moe is None:
        return LayerFlops(
            attention_proj=proj,
            attention_core=core,
            dense_ffn=2.0 * ffn_params(m, m.ffn_hidden),
            router=0.0,
            shared_experts=0.0,
            routed_experts=0.0,
            mla_up_proj=up,
            activation=activation_flops(m, m.ffn_hidden),
        )
    e = m.moe
    shared = 2.0 * e.n_shared_experts * ffn_params(m, e.shared_hidden)
    if e.shared_expert_gate and e.n_shared_experts:
        shared += 2.0 * m.d_model
    hidden = e.top_k * e.expert_hidden + e.n_shared_experts * e.shared_hidden
    return LayerFlops(
        attention_proj=proj,
        attention_core=core,
        dense_ffn=0.0,
        router=2.0 * router_params(m),  # noisy top-k's noise GEMM runs in training
        shared_experts=shared,
        routed_experts=2.0 * e.top_k * ffn_params(m, e.expert_hidden),
        mla_up_proj=up,
        activation=activation_flops(m, hidden),
    )


def token_flops(m: ModelSpec, seq_len: int | None = None, causal: bool = True) -> TokenFlops:
    """Forward FLOPs per token for sequences of ``seq_len`` (None: the model's max_seq_len)."""
    s = m.max_seq_len if seq_len is None else seq_len
    if s <= 0:
        raise ValueError(f"seq_len must be a positive number of tokens, got {s}")
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
