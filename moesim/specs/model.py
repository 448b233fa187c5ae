"""ModelSpec: the architecture of a dense or Mixture-of-Experts decoder (or encoder-decoder).

One spec feeds both the analytic layer (parameters, FLOPs, memory, traffic) and the PyTorch
transformer in ``moesim.nn``, so that the two can be checked against each other.

Field names follow the Hugging Face configs where one exists (``n_heads`` ≙ num_attention_heads,
``ffn_hidden`` ≙ intermediate_size, ``expert_hidden`` ≙ moe_intermediate_size).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from moesim.specs.base import Float, NonNegativeInt, PositiveFloat, PositiveInt, Spec

AttentionKind = Literal["mha", "gqa", "mla"]
FFNKind = Literal["swiglu", "geglu", "gelu", "relu"]
RouterKind = Literal["softmax_topk", "noisy_topk", "sigmoid_topk", "expert_choice", "hash"]
GATED_FFN_KINDS = ("swiglu", "geglu")


class MLASpec(Spec):
    """Multi-head latent attention (DeepSeek-V2 §2.1): low-rank joint compression of K and V.

    Only the ``kv_lora_rank``-wide latent and the shared RoPE key are cached at inference.
    """

    q_lora_rank: PositiveInt | None = Field(
        None, description="rank of the query compression; None = full-rank query projection"
    )
    kv_lora_rank: PositiveInt = Field(description="width of the compressed KV latent (cached)")
    qk_nope_head_dim: PositiveInt = Field(description="per-head query/key dim without RoPE")
    qk_rope_head_dim: PositiveInt = Field(description="per-head decoupled RoPE dim (key shared)")
    v_head_dim: PositiveInt = Field(description="per-head value dim")


class MoESpec(Spec):
    """The Mixture-of-Experts part of a model: which layers are sparse and how tokens route."""

    n_routed_experts: PositiveInt = Field(description="routed experts per MoE layer")
    top_k: PositiveInt = Field(description="routed experts each token is sent to")
    expert_hidden: PositiveInt = Field(description="hidden size of one routed expert's FFN")
    n_shared_experts: NonNegativeInt = Field(0, description="always-on experts (DeepSeekMoE)")
    shared_expert_hidden: PositiveInt | None = Field(
        None, description="hidden size of one shared expert; default expert_hidden"
    )
    first_k_dense: NonNegativeInt = Field(
        0, description="the first k layers use a dense FFN (DeepSeek first_k_dense_replace)"
    )
    moe_every: PositiveInt = Field(
        1, description="MoE in every P-th layer after first_k_dense (Switch/GLaM use 2)"
    )
    router: RouterKind = "softmax_topk"
    capacity_factor: PositiveFloat | None = Field(
        None, description="expert capacity = cf·tokens·top_k/experts; None = dropless"
    )
    n_groups: PositiveInt = Field(
        1, description="expert groups (nodes) for group-limited routing; 1 = unlimited"
    )
    topk_groups: PositiveInt | None = Field(
        None, description="M: each token reaches experts in at most M groups (DeepSeek-V3: 4)"
    )
    norm_topk_prob: bool = Field(True, description="renormalise the top-k gate weights to sum 1")
    routed_scaling_factor: PositiveFloat = Field(
        1.0,
        description="the routed experts' gate weights are multiplied by this "
        "(DeepSeek-V2: 16, DeepSeek-V3: 2.5, from their configs); no effect on cost",
    )
    shared_expert_gate: bool = Field(
        False, description="a sigmoid gate scales the shared expert (Qwen2-MoE)"
    )

    @model_validator(mode="after")
    def _check(self) -> MoESpec:
        if self.top_k > self.n_routed_experts:
            raise ValueError(
                f"moe.top_k ({self.top_k}) exceeds moe.n_routed_experts "
                f"({self.n_routed_experts}): lower top_k or add experts"
            )
        if self.n_routed_experts % self.n_groups:
            raise ValueError(
                f"moe.n_groups ({self.n_groups}) must divide moe.n_routed_experts "
                f"({self.n_routed_experts})"
            )
        if self.topk_groups is not None and self.topk_groups > self.n_groups:
            raise ValueError(
                f"moe.topk_groups ({self.topk_groups}) exceeds moe.n_groups ({self.n_groups})"
            )
        return self

    @property
    def shared_hidden(self) -> int:
        return self.shared_expert_hidden or self.expert_hidden


class ModelSpec(Spec):
    """A transformer language model. Dense when ``moe`` is None."""

    name: str
    source: str = Field("", description="where the figures come from (paper, config URL)")
    vocab_size: PositiveInt
    n_layers: PositiveInt = Field(description="decoder layers (the only stack of a decoder-only)")
    n_encoder_layers: NonNegativeInt = Field(
        0, description="encoder layers of an encoder-decoder (T5/Switch); 0 = decoder-only"
    )
    d_model: PositiveInt
    n_heads: PositiveInt
    n_kv_heads: PositiveInt | None = Field(None, description="GQA key/value heads; None = n_heads")
    head_dim: PositiveInt | None = Field(None, description="None = d_model / n_heads")
    attention: AttentionKind = "gqa"
    mla: MLASpec | None = None
    attention_bias: bool = Field(False, description="bias on the Q/K/V projections (Qwen2)")
    qk_norm: bool = Field(False, description="RMSNorm on per-head queries and keys (Qwen3)")
    ffn_kind: FFNKind = "swiglu"
    ffn_hidden: PositiveInt = Field(description="hidden size of the dense FFN layers")
    moe: MoESpec | None = None
    tie_embeddings: bool = False
    mtp_depth: NonNegativeInt = Field(0, description="multi-token-prediction modules (DS-V3: 1)")
    max_seq_len: PositiveInt = Field(4096, description="default sequence length for FLOPs")
    published_params_total: Float | None = Field(None, description="published total, for tests")
    published_params_active: Float | None = Field(None, description="published active count")

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        kv = self.kv_heads
        if self.n_heads % kv:
            raise ValueError(
                f"n_kv_heads ({kv}) must divide n_heads ({self.n_heads}): pick a divisor of n_heads"
            )
        if self.attention == "mla" and self.mla is None:
            raise ValueError("attention is 'mla' but the mla block is missing: add mla: {...}")
        if self.attention != "mla" and self.mla is not None:
            raise ValueError("an mla block is given but attention is not 'mla': set attention: mla")
        if self.attention == "mha" and kv != self.n_heads:
            raise ValueError("attention 'mha' needs n_kv_heads == n_heads: use attention: gqa")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}): "
                "give head_dim explicitly"
            )
        if self.moe is not None and self.moe.first_k_dense > self.n_layers:
            raise ValueError(
                f"moe.first_k_dense ({self.moe.first_k_dense}) exceeds n_layers ({self.n_layers})"
            )
        return self

    # -- derived shapes --------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def ffn_gated(self) -> bool:
        return self.ffn_kind in GATED_FFN_KINDS

    def is_moe_layer(self, layer: int) -> bool:
        """Whether decoder layer ``layer`` (0-based) has an MoE FFN."""
        if self.moe is None or layer < self.moe.first_k_dense:
            return False
        return (layer - self.moe.first_k_dense) % self.moe.moe_every == self.moe.moe_every - 1

    def is_moe_encoder_layer(self, layer: int) -> bool:
        """Encoder layers follow the same MoE pattern (Switch: every other layer is sparse)."""
        return self.is_moe_layer(layer)

    @property
    def n_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.n_layers))

    @property
    def n_moe_encoder_layers(self) -> int:
        return sum(self.is_moe_encoder_layer(i) for i in range(self.n_encoder_layers))

    @property
    def q_dim(self) -> int:
        """Width of all query heads together."""
        if self.mla is not None:
            return self.n_heads * (self.mla.qk_nope_head_dim + self.mla.qk_rope_head_dim)
        return self.n_heads * self.head_size

    @property
    def kv_dim(self) -> int:
        """Width of all key heads (= value heads) together, for MHA/GQA."""
        return self.kv_heads * self.head_size

    @property
    def attn_out_dim(self) -> int:
        """Width of the attention output before the output projection."""
        if self.mla is not None:
            return self.n_heads * self.mla.v_head_dim
        return self.n_heads * self.head_size
