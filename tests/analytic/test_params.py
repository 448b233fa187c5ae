"""Parameter counts against counts worked out by hand from the architecture.

Each expected value is written as the formula a reader can check against the model's config,
not read back from the code under test.
"""

from __future__ import annotations

from typing import Any

import pytest

from moesim.analytic.params import attention_params, count_params, ffn_params, mtp_module_params
from moesim.catalog import load_model, raw_entry
from moesim.specs import ModelSpec


def model(base: str, **update: Any) -> ModelSpec:
    return ModelSpec.model_validate(raw_entry("models", base) | update)


# -- a small dense model, every weight counted -----------------------------------------------------
def test_tiny_dense_by_hand() -> None:
    """tiny-dense: vocab 256, 4 layers, d 256, 8 heads × 32, 4 kv heads, SwiGLU 768, untied."""
    d, v, layers, hd, ffn = 256, 256, 4, 32, 768
    q, kv = 8 * hd, 4 * hd
    attention = d * q + 2 * d * kv + q * d  # Wq, Wk, Wv, Wo = 196,608
    norms = 2 * d  # pre-attention and pre-FFN RMSNorm
    mlp = 3 * d * ffn  # gate, up, down = 589,824
    expected = v * d + layers * (attention + norms + mlp) + d + v * d  # emb, blocks, final, head
    counts = count_params(load_model("tiny-dense"))
    assert counts.total == expected == 3_279_104
    assert counts.active == counts.total
    assert counts.breakdown() == {
        "embedding": v * d,
        "lm_head": v * d,
        "attention": layers * attention,
        "norms": layers * norms + d,
        "dense_ffn": layers * mlp,
        "router": 0,
        "shared_experts": 0,
        "routed_experts": 0,
        "mtp": 0,
    }


def test_tied_embeddings_drop_the_lm_head() -> None:
    untied = count_params(load_model("tiny-dense"))
    tied = count_params(model("tiny-dense", tie_embeddings=True))
    assert tied.lm_head == 0
    assert untied.total - tied.total == 256 * 256


def test_qkv_bias_and_qk_norm() -> None:
    """Qwen2's bias on q, k, v (not o); Qwen3's per-head RMSNorm on q and k (head_dim each)."""
    base = attention_params(load_model("tiny-dense"))
    assert attention_params(model("tiny-dense", attention_bias=True)) == base + 8 * 32 + 2 * 4 * 32
    assert attention_params(model("tiny-dense", qk_norm=True)) == base + 2 * 32


def test_ungated_ffn_has_two_matrices() -> None:
    m = model("tiny-dense", ffn_kind="gelu")
    assert ffn_params(m, 768) == 2 * 256 * 768


# -- published exact checkpoint counts -------------------------------------------------------------
def test_llama_3_8b_matches_the_checkpoint() -> None:
    """8,030,261,248 weights in Meta-Llama-3-8B's safetensors (the model card's 8.03B)."""
    d, v, layers, ffn = 4096, 128256, 32, 14336
    attention = d * d + 2 * d * 1024 + d * d
    per_layer = attention + 2 * d + 3 * d * ffn
    expected = 2 * v * d + layers * per_layer + d
    assert expected == 8_030_261_248
    assert count_params(load_model("llama-3-8b")).total == expected


def test_mixtral_8x7b_total_and_active_by_hand() -> None:
    """46.7B total, 12.9B active (Mistral AI): 8 experts of SwiGLU 14336, top-2, every layer."""
    d, v, layers, hidden = 4096, 32000, 32, 14336
    attention = d * d + 2 * d * 1024 + d * d
    expert = 3 * d * hidden
    router = d * 8
    per_layer = attention + 2 * d + router + 8 * expert
    total = 2 * v * d + layers * per_layer + d
    active = total - layers * (8 - 2) * expert
    counts = count_params(load_model("mixtral-8x7b"))
    assert (counts.total, counts.active) == (total, active) == (46_702_792_704, 12_879_925_248)


# -- MoE accounting --------------------------------------------------------------------------------
def test_tiny_moe_shared_expert_first_dense_layer_and_active() -> None:
    """tiny-moe: layer 0 dense (SwiGLU 768); layers 1-3: router, 1 shared + 8 routed experts of
    256, top-2. Active drops the 6 routed experts a token skips in each MoE layer."""
    d, v = 256, 256
    attention = 256 * 256 + 2 * 256 * 128 + 256 * 256
    expert = 3 * d * 256
    dense_layer = attention + 2 * d + 3 * d * 768
    moe_layer = attention + 2 * d + d * 8 + expert + 8 * expert
    total = 2 * v * d + d + dense_layer + 3 * moe_layer
    counts = count_params(load_model("tiny-moe"))
    assert counts.total == total
    assert counts.active == total - 3 * 6 * expert
    breakdown = counts.breakdown()
    assert breakdown["shared_experts"] == 3 * expert
    assert breakdown["routed_experts"] == 3 * 8 * expert
    assert breakdown["router"] == 3 * d * 8
    assert breakdown["dense_ffn"] == 3 * d * 768


def test_shared_expert_gate_adds_one_vector_per_layer() -> None:
    """Qwen2-MoE's sigmoid gate on the shared expert: a d_model → 1 projection."""
    moe = raw_entry("models", "tiny-moe")["moe"] | {"shared_expert_gate": True}
    gated = count_params(model("tiny-moe", moe=moe))
    plain = count_params(load_model("tiny-moe"))
    assert gated.total - plain.total == 3 * 256


def test_moe_every_other_layer() -> None:
    moe = raw_entry("models", "tiny-moe")["moe"] | {"first_k_dense": 0, "moe_every": 2}
    m = model("tiny-moe", moe=moe)
    counts = count_params(m)
    assert [x.routed_experts > 0 for x in counts.decoder_layers] == [False, True, False, True]


# -- MLA and MTP (DeepSeek-V3) ---------------------------------------------------------------------
def test_mla_attention_by_hand() -> None:
    """DeepSeek-V2 §2.1 with V3's sizes: W_DQ 7168×1536 (+ its norm), W_UQ 1536×128·192,
    W_DKV+W_KR 7168×(512+64) (+ norm), W_UK;W_UV 512×128·(128+128), W_O 128·128×7168."""
    d, h = 7168, 128
    q = d * 1536 + 1536 + 1536 * h * (128 + 64)
    kv = d * (512 + 64) + 512 + 512 * h * (128 + 128)
    o = h * 128 * d
    assert attention_params(load_model("deepseek-v3")) == q + kv + o == 187_107_328


def test_mla_without_query_compression() -> None:
    """DeepSeek-V2-Lite: q_lora_rank null → a full d × h·(nope+rope) query projection."""
    mla = raw_entry("models", "deepseek-v2")["mla"] | {"q_lora_rank": None}
    m = model("deepseek-v2", mla=mla)
    d, h = 5120, 128
    kv = d * (512 + 64) + 512 + 512 * h * (128 + 128)
    assert attention_params(m) == d * h * 192 + kv + h * 128 * d


def test_deepseek_v3_mtp_module_and_main_counts() -> None:
    """One MTP module (§2.2): 2 RMSNorms, a 2d→d projection, one MoE block, a final norm;
    embedding and head shared. ``total_main`` drops it (671B, not 685B)."""
    m = load_model("deepseek-v3")
    d = 7168
    counts = count_params(m)
    moe_block = counts.decoder_layers[-1].total
    assert mtp_module_params(m) == 2 * d + 2 * d * d + moe_block + d
    assert counts.mtp == mtp_module_params(m)
    assert counts.total_main == counts.total - counts.mtp
    one_expert = 3 * d * 2048
    assert counts.mtp - counts.mtp_active == (256 - 8) * one_expert
    assert counts.active_main == counts.active - counts.mtp_active
    assert counts.total_main == pytest.approx(671e9, rel=0.001)


# -- encoder-decoder -------------------------------------------------------------------------------
def test_switch_decoder_layers_hold_cross_attention() -> None:
    """T5 decoder layers: self- and cross-attention (2× projections) and 3 norms; the encoder
    stack adds its own final norm (2 final norms in all)."""
    m = load_model("switch-base-128")
    counts = count_params(m)
    d = 768
    attention = 4 * d * 768
    assert counts.encoder_layers[0].attention == attention
    assert counts.decoder_layers[0].attention == 2 * attention
    assert counts.decoder_layers[0].norms == 3 * d
    assert counts.final_norm == 2 * d
    assert counts.lm_head == 0  # tied
    assert len(counts.encoder_layers) == len(counts.decoder_layers) == 12
