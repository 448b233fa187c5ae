"""LoRA (Hu et al. 2021): trainable parameters and adapter FLOPs per target.

An adapter on a frozen weight W (in × out) adds B·A with A: r × in and B: out × r, so it holds
r·(in + out) trainable parameters and costs 2·r·(in + out) forward FLOPs per token that passes
through W. Targets (``LoRASpec.targets``):

- ``attention``: every projection of self-attention (Q, K, V, O; MLA's low-rank factors);
- ``mlp``: the dense FFN layers and the shared experts (gate, up, down);
- ``experts_shared``: one adapter per expert projection, shared by all routed experts of a layer
  (its parameters once per layer; its FLOPs once per routed copy, k per token);
- ``experts_per_expert``: one adapter per expert (E× the parameters, the same FLOPs);
- ``router``: the gate (d × E).

Training with a frozen base (what the simulator charges): the base's backward only computes the
gradient with respect to its input (one GEMM of the forward's size instead of two), the adapters
do the full backward, so a token costs 2·F_base + 3·F_adapters instead of 3·F_base
(the LoRA paper's "25% speedup" on GPT-3 comes from the same saving). Gradients and Adam states
exist only for the adapters; the reference model of DPO/GRPO/PPO is the base with the adapters
switched off (TRL's PEFT path), so no second copy of the weights is held.
"""

from __future__ import annotations

from dataclasses import dataclass

from moesim.specs import LoRASpec, ModelSpec

Matrix = tuple[int, int]  # (in, out) of one frozen weight


def attention_matrices(m: ModelSpec) -> list[Matrix]:
    """Projections of one self-attention block."""
    d = m.d_model
    if m.mla is not None:
        a = m.mla
        if a.q_lora_rank is None:
            q: list[Matrix] = [(d, m.q_dim)]
        else:  # W_DQ and W_UQ
            q = [(d, a.q_lora_rank), (a.q_lora_rank, m.q_dim)]
        kv = [
            (d, a.kv_lora_rank + a.qk_rope_head_dim),
            (a.kv_lora_rank, m.n_heads * (a.qk_nope_head_dim + a.v_head_dim)),
        ]
        return [*q, *kv, (m.attn_out_dim, d)]
    return [(d, m.q_dim), (d, m.kv_dim), (d, m.kv_dim), (m.attn_out_dim, d)]


def ffn_matrices(m: ModelSpec, hidden: int) -> list[Matrix]:
    """Gate, up and down (gated kinds) or up and down."""
    d = m.d_model
    up = [(d, hidden)] * (2 if m.ffn_gated else 1)
    return [*up, (hidden, d)]


def _adapter(matrices: list[Matrix], r: int) -> int:
    """Trainable parameters (= forward FLOPs / 2 per token) of adapters on ``matrices``."""
    return sum(r * (i + o) for i, o in matrices)


@dataclass(frozen=True)
class LoRALayer:
    """Adapters of one layer: parameters and forward FLOPs per token, by where they sit."""

    attention: int  # parameters on the attention projections
    mlp: int  # dense FFN or shared experts
    router: int
    experts_shared: int  # one adapter set shared by the routed experts
    experts_per_expert: int  # E adapter sets
    expert_copy_flops: float  # forward FLOPs of the expert adapters for one routed copy

    @property
    def non_expert(self) -> int:
        """Replicated over expert parallelism (sharded by tp like the attention)."""
        return self.attention + self.mlp + self.router + self.experts_shared

    @property
    def expert(self) -> int:
        """Sharded with the experts over ep·etp."""
        return self.experts_per_expert

    @property
    def total(self) -> int:
        return self.non_expert + self.expert

    @property
    def dense_flops(self) -> float:
        """Forward FLOPs per token of the attention, mlp and router adapters."""
        return 2.0 * (self.attention + self.mlp + self.router)


def lora_layer(m: ModelSpec, lora: LoRASpec, moe: bool) -> LoRALayer:
    r, t = lora.rank, set(lora.targets)
    attention = _adapter(attention_matrices(m), r) if "attention" in t else 0
    if not moe or m.moe is None:
        mlp = _adapter(ffn_matrices(m, m.ffn_hidden), r) if "mlp" in t else 0
        return LoRALayer(attention, mlp, 0, 0, 0, 0.0)
    e = m.moe
    mlp = 0
    if "mlp" in t and e.n_shared_experts:
        mlp = e.n_shared_experts * _adapter(ffn_matrices(m, e.shared_hidden), r)
    one_expert = _adapter(ffn_matrices(m, e.expert_hidden), r)
    shared = one_expert if "experts_shared" in t else 0
    per_expert = e.n_routed_experts * one_expert if "experts_per_expert" in t else 0
    copy_flops = 2.0 * one_expert * (("experts_shared" in t) + ("experts_per_expert" in t))
    router = _adapter([(m.d_model, e.n_routed_experts)], r) if "router" in t else 0
    return LoRALayer(attention, mlp, router, shared, per_expert, copy_flops)


@dataclass(frozen=True)
class LoRACounts:
    layers: list[LoRALayer]  # decoder layers, in order

    @property
    def total(self) -> int:
        return sum(x.total for x in self.layers)

    @property
    def by_target(self) -> dict[str, int]:
        keys = ("attention", "mlp", "router", "experts_shared", "experts_per_expert")
        return {k: sum(getattr(x, k) for x in self.layers) for k in keys}


def lora_counts(m: ModelSpec, lora: LoRASpec) -> LoRACounts:
    """Adapters of every decoder layer (embeddings and the LM head stay frozen)."""
    return LoRACounts([lora_layer(m, lora, m.is_moe_layer(i)) for i in range(m.n_layers)])


def lora_forward_flops_per_token(m: ModelSpec, lora: LoRASpec) -> float:
    """Forward FLOPs the adapters add per token (expert adapters once per routed copy)."""
    k = m.moe.top_k if m.moe is not None else 0
    return sum(x.dense_flops + k * x.expert_copy_flops for x in lora_counts(m, lora).layers)


def lora_training_flops_per_token(base_forward: float, adapter_forward: float) -> float:
    """Forward + backward with a frozen base: 2·F_base (forward, input gradients) + 3·F_adapter."""
    return 2.0 * base_forward + 3.0 * adapter_forward
