"""FLOPs per token against hand-computed cases.

Convention (moesim.analytic.flops; Kaplan et al. 2020, PaLM App. B): a multiply-accumulate is 2
FLOPs, so a GEMM costs 2 FLOPs per weight per token; backward is 2× forward; norms, biases,
embedding lookups and element-wise work are not counted. Attention scores add
2·h·d_qk·ctx (QKᵀ) + 2·h·d_v·ctx (AV) per token and layer, ctx = (s+1)/2 keys on average under a
causal mask.
"""

from __future__ import annotations

from typing import Any

import pytest

from moesim.analytic.activation_memory import activation_bytes_per_token
from moesim.analytic.flops import attention_core_flops, model_flops_per_token, token_flops
from moesim.analytic.params import count_params
from moesim.catalog import load_model, raw_entry
from moesim.specs import ModelSpec, ParallelSpec


def model(base: str, **update: Any) -> ModelSpec:
    return ModelSpec.model_validate(raw_entry("models", base) | update)


# -- a small dense model ---------------------------------------------------------------------------
def test_tiny_dense_forward_by_hand() -> None:
    """tiny-dense at s = 256: 2 × (projection and FFN weights of 4 layers + lm_head) plus the
    causal attention term 4 layers × 2·8 heads·(32+32)·(s+1)/2."""
    s, layers, d, v = 256, 4, 256, 256
    matmul_per_layer = (256 * 256 + 2 * 256 * 128 + 256 * 256) + 3 * 256 * 768
    gemm = 2 * (layers * matmul_per_layer + v * d)
    attention = layers * 2 * 8 * (32 + 32) * (s + 1) / 2
    f = token_flops(load_model("tiny-dense"), s)
    assert f.forward == gemm + attention
    assert f.lm_head == 2 * v * d


def test_backward_is_twice_and_model_flops_three_times_forward() -> None:
    f = token_flops(load_model("tiny-dense"), 256)
    assert f.backward == 2 * f.forward
    assert f.model_flops == 3 * f.forward


def test_norms_and_biases_are_not_gemm_flops() -> None:
    """QKV bias and q/k norms add parameters, not FLOPs: moesim counts GEMMs only."""
    base = token_flops(load_model("tiny-dense"), 256).forward
    assert token_flops(model("tiny-dense", attention_bias=True), 256).forward == base
    assert token_flops(model("tiny-dense", qk_norm=True), 256).forward == base


def test_non_causal_attention_attends_all_keys() -> None:
    m = load_model("tiny-dense")
    causal = token_flops(m, 256, causal=True)
    full = token_flops(m, 256, causal=False)
    per_key = 4 * 2 * 8 * (32 + 32)
    assert full.forward - causal.forward == pytest.approx(per_key * (256 - 257 / 2))


@pytest.mark.parametrize("seq_len", [0, -5])
def test_non_positive_seq_len_is_an_error_not_the_default(seq_len: int) -> None:
    """0 is a length, not 'unset': only None takes the model's max_seq_len."""
    m = load_model("tiny-dense")
    with pytest.raises(
        ValueError, match=f"seq_len must be a positive number of tokens, got {seq_len}"
    ):
        token_flops(m, seq_len)
    with pytest.raises(ValueError, match="seq_len must be a positive"):
        model_flops_per_token(m, seq_len)


def test_default_seq_len_is_the_models() -> None:
    m = load_model("tiny-dense")
    assert model_flops_per_token(m) == token_flops(m, m.max_seq_len).model_flops


# -- Llama-3-8B and the PaLM formula ---------------------------------------------------------------
def test_llama_3_8b_matches_the_palm_formula() -> None:
    """PaLM (Chowdhery et al. 2022, App. B): model FLOPs per token = 6·N + 12·L·H·Q·T, with N
    the matmul parameters, L layers, H heads, Q head dim, T sequence length (every key counted,
    no causal saving). moesim's N counts the untied lm_head, a real GEMM.

    For Llama-3-8B: N = 32·(4096·4096 + 2·4096·1024 + 4096·4096 + 3·4096·14336) + 128256·4096.
    """
    L, H, Q, T = 32, 32, 128, 8192
    n = 32 * (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 14336) + 128256 * 4096
    palm = 6 * n + 12 * L * H * Q * T
    m = load_model("llama-3-8b")
    assert token_flops(m, T, causal=False).model_flops == pytest.approx(palm, rel=1e-12)


def test_llama_3_8b_causal_halves_the_attention_term() -> None:
    """Under a causal mask each query sees (T+1)/2 keys on average: 6·N + 6·L·H·Q·(T+1)."""
    L, H, Q, T = 32, 32, 128, 8192
    n = 32 * (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 14336) + 128256 * 4096
    expected = 6 * n + 6 * L * H * Q * (T + 1)
    m = load_model("llama-3-8b")
    assert model_flops_per_token(m, T) == pytest.approx(expected, rel=1e-12)
    # 6N alone is within ~20% at 8k tokens: the attention term is not negligible
    assert 1.1 < model_flops_per_token(m, T) / (6 * n) < 1.3


def test_short_sequence_approaches_two_flops_per_active_matmul_weight() -> None:
    """At s = 1 the attention term is 4·L·H·Q: the rest is 2 × the active non-embedding,
    non-norm parameters (the link between the parameter and the FLOP count)."""
    m = load_model("mixtral-8x7b")
    counts = count_params(m)
    norms = counts.breakdown()["norms"]
    matmul_active = counts.active - counts.embedding - norms
    core = 32 * 4 * 32 * 128 * 1
    assert token_flops(m, 1).forward == pytest.approx(2 * matmul_active + core, rel=1e-12)


# -- MoE: only top-k experts count -----------------------------------------------------------------
def test_mixtral_counts_top_k_experts_and_the_router() -> None:
    """Per layer: projections + router 4096·8 + top-2 experts of 3·4096·14336."""
    m = load_model("mixtral-8x7b")
    layer = token_flops(m, 4096).layers[0]
    assert layer.routed_experts == 2 * 2 * 3 * 4096 * 14336
    assert layer.router == 2 * 4096 * 8
    assert layer.dense_ffn == 0


def test_more_experts_at_same_top_k_only_add_router_flops() -> None:
    m = load_model("mixtral-8x7b")
    moe = raw_entry("models", "mixtral-8x7b")["moe"] | {"n_routed_experts": 64}
    wide = model("mixtral-8x7b", moe=moe)
    extra = token_flops(wide, 4096).forward - token_flops(m, 4096).forward
    assert extra == 32 * 2 * 4096 * (64 - 8)


def test_top_k_scales_routed_expert_flops() -> None:
    moe = raw_entry("models", "mixtral-8x7b")["moe"] | {"top_k": 4}
    four = token_flops(model("mixtral-8x7b", moe=moe), 4096)
    two = token_flops(load_model("mixtral-8x7b"), 4096)
    assert four.forward - two.forward == 32 * 2 * 2 * 3 * 4096 * 14336


def test_tiny_moe_dense_first_layer_and_shared_expert() -> None:
    m = load_model("tiny-moe")
    layers = token_flops(m, 256).layers
    assert layers[0].dense_ffn == 2 * 3 * 256 * 768 and layers[0].routed_experts == 0
    assert layers[1].shared_experts == 2 * 3 * 256 * 256
    assert layers[1].routed_experts == 2 * 2 * 3 * 256 * 256


# -- MLA and MTP -----------------------------------------------------------------------------------
def test_mla_attention_core_uses_qk_and_v_head_dims() -> None:
    """DeepSeek-V3: QKᵀ over nope+rope = 192 dims, AV over v_head_dim = 128."""
    m = load_model("deepseek-v3")
    assert attention_core_flops(m, 100.0) == 2 * 128 * (192 + 128) * 100


def test_mla_projection_flops_exclude_the_latent_norms() -> None:
    m = load_model("deepseek-v3")
    d, h = 7168, 128
    weights = d * 1536 + 1536 * h * 192 + d * 576 + 512 * h * 256 + h * 128 * d
    assert token_flops(m, 4096).layers[0].attention_proj == 2 * weights


def test_mtp_module_adds_projection_block_and_head() -> None:
    """DeepSeek-V3 MTP (§2.2): the 2d→d projection, one MoE block and the shared output head."""
    m = load_model("deepseek-v3")
    f = token_flops(m, 4096)
    block = f.layers[-1].total
    assert f.mtp == 2 * 2 * 7168 * 7168 + block + 2 * 129280 * 7168
    assert f.forward == sum(x.total for x in f.layers) + f.lm_head + f.mtp


# -- encoder-decoder -------------------------------------------------------------------------------
def test_switch_encoder_is_bidirectional_and_decoder_cross_attends() -> None:
    m = load_model("switch-base-128")
    s = 512
    f = token_flops(m, s)
    enc, dec = f.layers[12], f.layers[0]
    assert len(f.layers) == 24
    assert enc.attention_core == 2 * 12 * 128 * s
    assert dec.attention_core == 2 * 12 * 128 * (s + 1) / 2 + 2 * 12 * 128 * s
    assert dec.attention_proj == 2 * enc.attention_proj


# -- recomputation ---------------------------------------------------------------------------------
def test_recompute_none_adds_nothing() -> None:
    f = token_flops(load_model("mixtral-8x7b"), 4096)
    assert f.recompute("none") == 0
    assert f.hardware_flops("none") == f.model_flops


def test_recompute_selective_redoes_the_activations_of_mixtral() -> None:
    """Mixtral (GQA, SwiGLU, no MLA): selective recomputes the norms (0 FLOPs) and the
    activations: per layer SiLU + gating product on top-2 × 14336 hidden elements; no
    attention core (memory keeps what flash attention's backward reads)."""
    f = token_flops(load_model("mixtral-8x7b"), 4096)
    assert f.recompute("selective") == 32 * 2 * (2 * 14336)
    assert f.hardware_flops("selective") == f.model_flops + 32 * 2 * 2 * 14336


def test_recompute_selective_redoes_mla_up_projections_of_deepseek_v3() -> None:
    """DeepSeek-V3, per layer: W_UQ 1536 → 128·192, W_UK and W_UV 512 → 128·(128 + 128), at 2
    FLOPs per weight; activations: 3 dense layers of 18432 and 58 MoE layers of top-8 × 2048 +
    1 shared × 2048 = 18432 hidden elements, 2 FLOPs each (SwiGLU)."""
    f = token_flops(load_model("deepseek-v3"), 4096)
    up = 2 * (1536 * 128 * 192 + 512 * 128 * (128 + 128))
    assert up == 109_051_904
    act = 2 * 18432
    assert [x.mla_up_proj for x in f.layers] == [up] * 61
    assert [x.activation for x in f.layers] == [act] * 61
    assert f.recompute("selective") == 61 * (up + act) == 6_654_414_848
    assert f.hardware_flops("selective") == f.model_flops + 6_654_414_848


def test_recompute_selective_mla_without_query_compression_recomputes_w_q() -> None:
    """q_lora_rank None (DeepSeek-V2-Lite style): Q comes from d_model through the full W_Q."""
    mla = raw_entry("models", "deepseek-v3")["mla"] | {"q_lora_rank": None}
    layer = token_flops(model("deepseek-v3", mla=mla), 4096).layers[0]
    assert layer.mla_up_proj == 2 * (7168 * 128 * 192 + 512 * 128 * 256)


def test_recompute_selective_of_a_non_gated_ffn() -> None:
    """Switch-Base-128 (ReLU, top-1, 12 + 12 layers): one FLOP per hidden element."""
    f = token_flops(load_model("switch-base-128"), 512)
    assert f.recompute("selective") == 24 * 3072


def test_recompute_selective_does_not_grow_with_sequence_length() -> None:
    """Nothing of the attention core is recomputed, so the cost per token is the same at
    any length."""
    m = load_model("llama-3-8b")
    assert token_flops(m, 1024).recompute("selective") == token_flops(m, 8192).recompute(
        "selective"
    )


@pytest.mark.parametrize("model_id", ["mixtral-8x7b", "deepseek-v3", "llama-3-8b", "tiny-moe"])
def test_recompute_selective_redoes_what_memory_drops(model_id: str) -> None:
    """The elements memory.py does not keep under selective (tp 1, bf16) are the two norm
    outputs, MLA's up-projected Q, K (nope + rope) and V, and the activation outputs; FLOPs
    recompute the same activations (2 FLOPs per element, SwiGLU) and MLA's GEMMs."""
    m = load_model(model_id)
    p = ParallelSpec(dp=1)
    f = token_flops(m, 4096)
    for i, layer in enumerate(f.layers):
        moe = m.is_moe_layer(i)
        none = activation_bytes_per_token(m, moe, p, "none", 2.0)
        selective = activation_bytes_per_token(m, moe, p, "selective", 2.0)
        dropped = (none - selective) / 2.0
        mla_out = 0
        if m.mla is not None:
            a = m.mla
            mla_out = m.q_dim + m.n_heads * (a.qk_nope_head_dim + a.qk_rope_head_dim)
            mla_out += m.n_heads * a.v_head_dim
        assert dropped - 2 * m.d_model - mla_out == layer.activation / 2
        assert (layer.mla_up_proj > 0) == (mla_out > 0)


def test_recompute_full_redoes_every_layer_forward() -> None:
    f = token_flops(load_model("mixtral-8x7b"), 4096)
    assert f.recompute("full") == sum(x.total for x in f.layers)
    assert f.recompute("full") == f.forward - f.lm_head
    assert f.hardware_flops("full") == pytest.approx(4 * f.forward - f.lm_head)


def test_recompute_modes_are_ordered() -> None:
    f = token_flops(load_model("llama-3-8b"), 8192)
    assert f.recompute("none") < f.recompute("selective") < f.recompute("full")


def test_unknown_recompute_mode_is_an_error() -> None:
    f = token_flops(load_model("tiny-dense"))
    with pytest.raises(ValueError, match=r"none\|selective\|full"):
        f.recompute("partial")
