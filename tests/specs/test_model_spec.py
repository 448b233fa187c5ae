"""ModelSpec and MoESpec rules, and the derived shapes the analytic layer relies on."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from scenario_files import ScenarioFiles

from moesim.catalog import load_model, raw_entry
from moesim.specs import ModelSpec, MoESpec


def tiny(**update: Any) -> dict[str, Any]:
    return raw_entry("models", "tiny-moe") | update


def moe(**update: Any) -> dict[str, Any]:
    return raw_entry("models", "tiny-moe")["moe"] | update


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        ModelSpec.model_validate(data)
    return str(info.value)


def test_top_k_above_experts_is_refused() -> None:
    assert "moe.top_k (9) exceeds moe.n_routed_experts (8): lower top_k or add experts" in (
        error_of(tiny(moe=moe(top_k=9)))
    )


def test_top_k_above_experts_in_a_scenario_file_names_the_line(files: ScenarioFiles) -> None:
    files.error(
        {"model": tiny(moe=moe(top_k=9)), "parallel": {"ep": 1}},
        "model.moe",
        "moe.top_k (9) exceeds moe.n_routed_experts (8)",
    )


def test_groups_must_divide_experts() -> None:
    assert "moe.n_groups (3) must divide moe.n_routed_experts (8)" in error_of(
        tiny(moe=moe(n_groups=3))
    )


def test_topk_groups_above_groups_is_refused() -> None:
    assert "moe.topk_groups (4) exceeds moe.n_groups (2)" in error_of(
        tiny(moe=moe(n_groups=2, topk_groups=4))
    )


def test_kv_heads_must_divide_heads() -> None:
    assert "n_kv_heads (3) must divide n_heads (8)" in error_of(tiny(n_kv_heads=3))


def test_mla_attention_needs_the_mla_block() -> None:
    assert "mla block is missing" in error_of(tiny(attention="mla"))


def test_mla_block_needs_mla_attention() -> None:
    mla = raw_entry("models", "deepseek-v2")["mla"]
    assert "set attention: mla" in error_of(tiny(mla=mla))


def test_mha_needs_as_many_kv_heads_as_heads() -> None:
    assert "use attention: gqa" in error_of(tiny(attention="mha", n_kv_heads=4))


def test_head_dim_needed_when_d_model_does_not_split() -> None:
    assert "give head_dim explicitly" in error_of(tiny(d_model=250))
    assert ModelSpec.model_validate(tiny(d_model=250, head_dim=32)).head_size == 32


def test_first_k_dense_above_layers_is_refused() -> None:
    assert "moe.first_k_dense (5) exceeds n_layers (4)" in error_of(tiny(moe=moe(first_k_dense=5)))


def test_capacity_factor_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="capacity_factor"):
        MoESpec.model_validate(moe(capacity_factor=0))


def test_unknown_model_key_is_refused() -> None:
    assert "Extra inputs are not permitted" in error_of(tiny(num_layers=4))


# -- derived shapes --------------------------------------------------------------------------------
def test_moe_layer_pattern_first_k_dense() -> None:
    m = load_model("deepseek-v3")
    assert [m.is_moe_layer(i) for i in range(5)] == [False, False, False, True, True]
    assert m.n_moe_layers == 61 - 3


def test_moe_layer_pattern_every_other_layer() -> None:
    """Switch: every other FFN is sparse, the second of each pair (layers 1, 3, ...)."""
    m = load_model("switch-base-128")
    assert [m.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert m.n_moe_layers == 6
    assert m.n_moe_encoder_layers == 6


def test_dense_model_has_no_moe_layers() -> None:
    m = load_model("llama-3-8b")
    assert not m.is_moe
    assert m.n_moe_layers == 0


def test_gqa_and_mla_widths() -> None:
    llama = load_model("llama-3-8b")
    assert (llama.head_size, llama.q_dim, llama.kv_dim) == (128, 4096, 1024)
    ds = load_model("deepseek-v3")
    assert ds.q_dim == 128 * (128 + 64)
    assert ds.attn_out_dim == 128 * 128


def test_shared_expert_hidden_defaults_to_expert_hidden() -> None:
    assert MoESpec.model_validate(moe()).shared_hidden == 256
    assert MoESpec.model_validate(moe(shared_expert_hidden=512)).shared_hidden == 512
