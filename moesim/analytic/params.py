"""Parameter counts, per component, total and active.

The accounting matches ``moesim.nn`` module for module (tests compare against
``sum(p.numel())``): RMSNorm weights without bias, bias only where the spec says
(``attention_bias``), per-head q/k RMSNorm for ``qk_norm``, router without bias, the
auxiliary-loss-free balancing bias (DeepSeek-V3) as a buffer, not a parameter.

"Active" parameters are those a token touches: everything except the routed experts it is not
sent to. Published active figures count the embeddings too (Mixtral: 12.9B), and so does this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moesim.specs import ModelSpec


@dataclass(frozen=True)
class LayerParams:
    """Parameters of one transformer block, split the way parallelism splits them."""

    attention: int  # projections (+ bias, q/k norms)
    norms: int  # pre-attention and pre-FFN RMSNorm weights (+ cross-attention norm)
    dense_ffn: int  # the dense FFN, 0 in an MoE layer
    router: int  # gate weight, 0 in a dense layer
    shared_experts: int  # always-on experts (+ their gate)
    routed_experts: int  # all routed experts of the layer
    routed_expert_one: int  # one routed expert

    @property
    def total(self) -> int:
        return (
            self.attention
            + self.norms
            + self.dense_ffn
            + self.router
            + self.shared_experts
            + self.routed_experts
        )

    @property
    def non_expert(self) -> int:
        """What tensor/data parallelism handles (everything but the routed experts)."""
        return self.total - self.routed_experts


@dataclass(frozen=True)
class ParamCounts:
    total: int
    active: int
    embedding: int
    lm_head: int
    final_norm: int
    decoder_layers: list[LayerParams] = field(repr=False)
    encoder_layers: list[LayerParams] = field(repr=False)
    mtp: int = 0
    mtp_active: int = 0

    @property
    def total_main(self) -> int:
        """Without the MTP modules: what papers report (DeepSeek-V3: 671B, not 685B)."""
        return self.total - self.mtp

    @property
    def active_main(self) -> int:
        return self.active - self.mtp_active

    def breakdown(self) -> dict[str, int]:
        """Per-component totals (the keys of ``moesim inspect``)."""
        layers = self.decoder_layers + self.encoder_layers
        return {
            "embedding": self.embedding,
            "lm_head": self.lm_head,
            "attention": sum(x.attention for x in layers),
            "norms": sum(x.norms for x in layers) + self.final_norm,
            "dense_ffn": sum(x.dense_ffn for x in layers),
            "router": sum(x.router for x in layers),
            "shared_experts": sum(x.shared_experts for x in layers),
            "routed_experts": sum(x.routed_experts for x in layers),
            "mtp": self.mtp,
        }


def attention_params(m: ModelSpec) -> int:
    """Self-attention projections of one layer (Q, K, V, O; MLA's low-rank factors)."""
    d = m.d_model
    if m.mla is not None:
        a = m.mla
        if a.q_lora_rank is None:
            q = d * m.q_dim
        else:  # W_DQ, its RMSNorm, W_UQ (DeepSeek-V2 eq. 12)
            q = d * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * m.q_dim
        # W_DKV with the decoupled RoPE key, its RMSNorm, W_UK and W_UV stacked, W_O
        kv = d * (a.kv_lora_rank + a.qk_rope_head_dim) + a.kv_lora_rank
        kv += a.kv_lora_rank * m.n_heads * (a.qk_nope_head_dim + a.v_head_dim)
        return q + kv + m.attn_out_dim * d
    proj = d * (m.q_dim + 2 * m.kv_dim) + m.attn_out_dim * d
    bias = (m.q_dim + 2 * m.kv_dim) if m.attention_bias else 0
    qk_norm = 2 * m.head_size if m.qk_norm else 0
    return proj + bias + qk_norm


def ffn_params(m: ModelSpec, hidden: int) -> int:
    """One FFN (or one expert): gated kinds have gate, up and down projections."""
    return (3 if m.ffn_gated else 2) * m.d_model * hidden


def router_params(m: ModelSpec) -> int:
    """The gate of one MoE layer: a D×E weight; noisy top-k adds its learned D×E noise weight
    W_noise (Shazeer et al. 2017, eq. 4); hash routing (Roller et al. 2021) learns nothing."""
    if m.moe is None or m.moe.router == "hash":
        return 0
    weights = 2 if m.moe.router == "noisy_topk" else 1
    return weights * m.d_model * m.moe.n_routed_experts


def layer_params(m: ModelSpec, moe: bool, cross_attention: bool = False) -> LayerParams:
    attention = attention_params(m) * (2 if cross_attention else 1)
    norms = m.d_model * (3 if cross_attention else 2)
    if not moe or m.moe is None:
        return LayerParams(attention, norms, ffn_params(m, m.ffn_hidden), 0, 0, 0, 0)
    e = m.moe
    one = ffn_params(m, e.expert_hidden)
    shared = e.n_shared_experts * ffn_params(m, e.shared_hidden)
    if e.shared_expert_gate and e.n_shared_experts:
        shared += m.d_model
    return LayerParams(
        attention=attention,
        norms=norms,
        dense_ffn=0,
        router=router_params(m),
        shared_experts=shared,
        routed_experts=e.n_routed_experts * one,
        routed_expert_one=one,
    )


def mtp_module_params(m: ModelSpec) -> int:
    """One DeepSeek-V3 MTP module (§2.2): two RMSNorms, a 2d→d projection, one block
    (MoE when the model is), an output RMSNorm; embedding and head are shared."""
    block = layer_params(m, moe=m.is_moe).total
    return 2 * m.d_model + 2 * m.d_model * m.d_model + block + m.d_model


def count_params(m: ModelSpec) -> ParamCounts:
    decoder = [
        layer_params(m, m.is_moe_layer(i), cross_attention=m.n_encoder_layers > 0)
        for i in range(m.n_layers)
    ]
    encoder = [layer_params(m, m.is_moe_encoder_layer(i)) for i in range(m.n_encoder_layers)]
    embedding = m.vocab_size * m.d_model
    lm_head = 0 if m.tie_embeddings else m.vocab_size * m.d_model
    final_norm = m.d_model * (2 if m.n_encoder_layers else 1)
    mtp = m.mtp_depth * mtp_module_params(m)
    total = embedding + lm_head + final_norm + sum(x.total for x in decoder + encoder) + mtp
    inactive = mtp_inactive = 0
    if m.moe is not None:
        idle = m.moe.n_routed_experts - m.moe.top_k
        inactive = sum(idle * x.routed_expert_one for x in decoder + encoder)
        mtp_inactive = m.mtp_depth * idle * ffn_params(m, m.moe.expert_hidden)
    return ParamCounts(
        total=total,
        active=total - inactive - mtp_inactive,
        embedding=embedding,
        lm_head=lm_head,
        final_norm=final_norm,
        decoder_layers=decoder,
        encoder_layers=encoder,
        mtp=mtp,
        mtp_active=mtp - mtp_inactive,
    )
