"""LoRA: trainable parameters and adapter FLOPs per target against hand-computed counts."""

from __future__ import annotations

import pytest

from moesim.analytic.flops import token_flops
from moesim.analytic.lora import (
    attention_matrices,
    lora_counts,
    lora_forward_flops_per_token,
    lora_training_flops_per_token,
)
from moesim.analytic.params import attention_params
from moesim.catalog import load_model
from moesim.specs import LoRASpec

ALL_TARGETS = ["attention", "mlp", "experts_shared", "experts_per_expert", "router"]


def test_llama_3_8b_all_linear_rank_16_by_hand():
    # per layer, r·(in + out) on each projection (d 4096, kv 1024, ffn 14336):
    attention = 16 * ((4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096))  # q, k, v, o
    mlp = 16 * 3 * (4096 + 14336)  # gate, up, down
    m = load_model("llama-3-8b")
    c = lora_counts(m, LoRASpec(rank=16, targets=["attention", "mlp"]))
    assert c.total == 32 * (attention + mlp) == 41_943_040
    assert c.by_target["attention"] == 32 * attention
    # expert and router targets touch nothing in a dense model
    assert lora_counts(m, LoRASpec(rank=16, targets=ALL_TARGETS)).total == c.total


@pytest.mark.parametrize("model", ["llama-3-8b", "mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3"])
@pytest.mark.parametrize(
    "targets", [["attention"], ["mlp"], ["experts_shared"], ["experts_per_expert"], ["router"]]
)
def test_trainable_parameters_and_flops_are_linear_in_rank(model, targets):
    m = load_model(model)
    r8, r32 = LoRASpec(rank=8, targets=targets), LoRASpec(rank=32, targets=targets)
    assert lora_counts(m, r32).total == 4 * lora_counts(m, r8).total
    assert lora_forward_flops_per_token(m, r32) == pytest.approx(
        4 * lora_forward_flops_per_token(m, r8)
    )


def test_mixtral_expert_adapters_shared_vs_per_expert():
    m = load_model("mixtral-8x7b")  # 32 MoE layers, 8 experts top-2, d 4096, hidden 14336
    one = 16 * 3 * (4096 + 14336)
    shared = lora_counts(m, LoRASpec(rank=16, targets=["experts_shared"]))
    per = lora_counts(m, LoRASpec(rank=16, targets=["experts_per_expert"]))
    assert shared.total == 32 * one
    assert per.total == 8 * 32 * one
    assert all(x.expert == 8 * one and x.non_expert == 0 for x in per.layers)
    assert all(x.non_expert == one and x.expert == 0 for x in shared.layers)
    # FLOPs: each token goes through top-2 experts, whichever adapters they carry
    f_shared = lora_forward_flops_per_token(m, LoRASpec(rank=16, targets=["experts_shared"]))
    f_per = lora_forward_flops_per_token(m, LoRASpec(rank=16, targets=["experts_per_expert"]))
    assert f_shared == f_per == pytest.approx(32 * 2 * 2.0 * one)


def test_router_adapter_is_d_plus_experts_per_moe_layer():
    m = load_model("qwen3-30b-a3b")  # 48 MoE layers, d 2048, 128 experts
    c = lora_counts(m, LoRASpec(rank=4, targets=["router"]))
    assert c.total == 48 * 4 * (2048 + 128)
    m = load_model("deepseek-v3")  # first 3 layers dense: no router
    c = lora_counts(m, LoRASpec(rank=4, targets=["router"]))
    assert c.total == 58 * 4 * (7168 + 256)


@pytest.mark.parametrize("model", ["deepseek-v2", "deepseek-v3", "llama-3-70b", "qwen3-30b-a3b"])
def test_attention_matrices_cover_the_projection_weights(model):
    m = load_model(model)
    weights = sum(i * o for i, o in attention_matrices(m))
    norms = 0
    if m.mla is not None:
        norms = m.mla.kv_lora_rank + (m.mla.q_lora_rank or 0)
    if m.qk_norm:
        norms += 2 * m.head_size
    assert weights == attention_params(m) - norms


def test_training_flops_with_a_frozen_base():
    m = load_model("llama-3-8b")
    lora = LoRASpec(rank=16, targets=["attention", "mlp"])
    fwd = token_flops(m, 4096).forward
    adapter = lora_forward_flops_per_token(m, lora)
    assert adapter == pytest.approx(2.0 * lora_counts(m, lora).total)
    total = lora_training_flops_per_token(fwd, adapter)
    assert total == pytest.approx(2 * fwd + 3 * adapter)
    # about two thirds of full fine-tuning's 3·F (adapters are ~0.5% of the weights here)
    assert 0.66 < total / (3 * fwd) < 0.68
