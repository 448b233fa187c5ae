"""moesim.hf_import: Hugging Face config.json → ModelSpec.

The sample configs in tests/data/hf/ were written by hand from the public field names of each
model's config.json. Where the catalog has the model, the import must give exactly the same
parameter counts; everything else checks the field mapping one rule at a time.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from moesim.analytic.params import count_params
from moesim.catalog import load_model
from moesim.hf_import import HFImportError, model_spec_from_hf, model_yaml_from_hf
from moesim.specs import ModelSpec

HF = Path(__file__).parent / "data" / "hf"

# sample config -> catalog id of the same model
CATALOG_TWINS = {
    "mixtral-8x7b": "mixtral-8x7b",
    "deepseek-v3": "deepseek-v3",
    "deepseek-v2": "deepseek-v2",
    "qwen3-moe": "qwen3-30b-a3b",
    "dbrx": "dbrx",
    "llama-3-8b": "llama-3-8b",
}


def config(stem: str) -> dict[str, Any]:
    return json.loads((HF / f"{stem}.json").read_text())


def imported(stem: str) -> ModelSpec:
    return model_spec_from_hf(config(stem))


@pytest.mark.parametrize(("stem", "catalog_id"), sorted(CATALOG_TWINS.items()))
def test_import_matches_catalog_total(stem: str, catalog_id: str) -> None:
    assert count_params(imported(stem)).total == count_params(load_model(catalog_id)).total


@pytest.mark.parametrize(("stem", "catalog_id"), sorted(CATALOG_TWINS.items()))
def test_import_matches_catalog_active(stem: str, catalog_id: str) -> None:
    assert count_params(imported(stem)).active == count_params(load_model(catalog_id)).active


@pytest.mark.parametrize(("stem", "catalog_id"), sorted(CATALOG_TWINS.items()))
def test_import_matches_catalog_moe_layout(stem: str, catalog_id: str) -> None:
    """Same MoE layers and routing, not only the same totals by coincidence."""
    a, b = imported(stem), load_model(catalog_id)
    assert [a.is_moe_layer(i) for i in range(a.n_layers)] == [
        b.is_moe_layer(i) for i in range(b.n_layers)
    ]
    if b.moe is not None:
        assert a.moe is not None
        for key in ("n_routed_experts", "top_k", "n_shared_experts", "router", "n_groups"):
            assert getattr(a.moe, key) == getattr(b.moe, key), key


def test_qwen2_moe_matches_published_counts() -> None:
    """Qwen1.5-MoE-A2.7B model card: 14.3B total, 2.7B activated (no catalog entry)."""
    counts = count_params(imported("qwen2-moe"))
    assert counts.total == pytest.approx(14.3e9, rel=0.03)
    assert counts.active == pytest.approx(2.7e9, rel=0.03)


def test_qwen2_moe_has_gated_shared_expert_and_qkv_bias() -> None:
    m = imported("qwen2-moe")
    assert m.moe is not None
    assert m.moe.n_shared_experts == 1
    assert m.moe.shared_expert_hidden == 5632
    assert m.moe.shared_expert_gate is True
    assert m.moe.norm_topk_prob is False
    assert m.attention_bias is True


def test_qwen3_moe_has_qk_norm_and_no_shared_expert() -> None:
    m = imported("qwen3-moe")
    assert m.qk_norm is True
    assert m.attention_bias is False
    assert m.head_dim == 128
    assert m.moe is not None and m.moe.n_shared_experts == 0


def test_deepseek_v3_maps_mla_sigmoid_router_groups_and_mtp() -> None:
    m = imported("deepseek-v3")
    assert m.attention == "mla" and m.mla is not None
    assert (m.mla.q_lora_rank, m.mla.kv_lora_rank) == (1536, 512)
    assert m.moe is not None
    assert m.moe.router == "sigmoid_topk"
    assert (m.moe.n_groups, m.moe.topk_groups) == (8, 4)
    assert m.moe.first_k_dense == 3
    assert m.moe.routed_scaling_factor == 2.5
    assert m.mtp_depth == 1


def test_deepseek_v2_lite_without_q_lora_has_full_rank_query() -> None:
    cfg = config("deepseek-v2") | {"q_lora_rank": None, "n_group": 1, "topk_group": 1}
    m = model_spec_from_hf(cfg)
    assert m.mla is not None and m.mla.q_lora_rank is None
    assert m.moe is not None and m.moe.n_groups == 1


def test_dbrx_reads_nested_attn_and_ffn_config() -> None:
    m = imported("dbrx")
    assert m.n_kv_heads == 8
    assert m.ffn_hidden == 10752
    assert m.moe is not None and (m.moe.n_routed_experts, m.moe.top_k) == (16, 4)


def test_max_seq_len_is_capped_at_4096() -> None:
    assert imported("mixtral-8x7b").max_seq_len == 4096
    assert model_spec_from_hf(
        config("llama-3-8b") | {"max_position_embeddings": 2048}
    ).max_seq_len == (2048)


def test_name_defaults_to_the_hub_repo_and_can_be_given() -> None:
    assert imported("mixtral-8x7b").name == "mixtral-8x7b-v0.1"
    assert model_spec_from_hf(config("mixtral-8x7b"), name="mine").name == "mine"


@pytest.mark.parametrize(
    ("act", "kind"), [("silu", "swiglu"), ("gelu", "geglu"), ("gelu_pytorch_tanh", "geglu")]
)
def test_hidden_act_maps_to_gated_ffn(act: str, kind: str) -> None:
    assert model_spec_from_hf(config("llama-3-8b") | {"hidden_act": act}).ffn_kind == kind


def test_unsupported_hidden_act_names_the_field() -> None:
    with pytest.raises(HFImportError, match="hidden_act"):
        model_spec_from_hf(config("llama-3-8b") | {"hidden_act": "relu"})


@pytest.mark.parametrize(
    ("model_type", "qkv_bias", "qk_norm"),
    [
        ("llama", False, False),
        ("mistral", False, False),
        ("qwen2", True, False),
        ("qwen3", False, True),
    ],
)
def test_dense_families_attention_details(model_type: str, qkv_bias: bool, qk_norm: bool) -> None:
    m = model_spec_from_hf(config("llama-3-8b") | {"model_type": model_type})
    assert (m.attention_bias, m.qk_norm) == (qkv_bias, qk_norm)
    assert m.moe is None


def test_tie_word_embeddings_drops_the_lm_head() -> None:
    m = model_spec_from_hf(config("llama-3-8b") | {"tie_word_embeddings": True})
    assert m.tie_embeddings is True
    assert count_params(m).lm_head == 0


def test_qwen_decoder_sparse_step_maps_to_moe_every() -> None:
    """HF: layer i is sparse iff (i + 1) % decoder_sparse_step == 0 → layers 1, 3, 5, ..."""
    m = model_spec_from_hf(config("qwen3-moe") | {"decoder_sparse_step": 2})
    assert m.moe is not None and (m.moe.first_k_dense, m.moe.moe_every) == (0, 2)
    assert [m.is_moe_layer(i) for i in range(4)] == [False, True, False, True]


def test_qwen_contiguous_mlp_only_prefix_maps_to_first_k_dense() -> None:
    m = model_spec_from_hf(config("qwen3-moe") | {"mlp_only_layers": [0, 1]})
    assert m.moe is not None and m.moe.first_k_dense == 2
    assert m.n_moe_layers == 46


def test_qwen_non_contiguous_mlp_only_layers_is_an_error() -> None:
    with pytest.raises(HFImportError, match=r"mlp_only_layers=\[5, 9\].*first_k_dense"):
        model_spec_from_hf(config("qwen3-moe") | {"mlp_only_layers": [5, 9]})


def test_deepseek_moe_layer_freq_that_moesim_cannot_express_is_an_error() -> None:
    """HF DeepSeek: MoE iff i >= first_k and i % freq == 0; with first_k 0, freq 2 layer 0 is
    MoE and layer 1 dense, which 'first k dense, then every P-th' cannot express."""
    cfg = config("deepseek-v2") | {"first_k_dense_replace": 0, "moe_layer_freq": 2}
    with pytest.raises(HFImportError, match="moe_layer_freq=2"):
        model_spec_from_hf(cfg)


def test_unknown_model_type_names_it() -> None:
    with pytest.raises(HFImportError, match="model_type 'gpt2' is not supported"):
        model_spec_from_hf(config("gpt2"))


def test_missing_model_type_is_an_error() -> None:
    cfg = config("llama-3-8b")
    del cfg["model_type"]
    with pytest.raises(HFImportError, match="no 'model_type'"):
        model_spec_from_hf(cfg)


@pytest.mark.parametrize(
    ("stem", "key"),
    [
        ("mixtral-8x7b", "num_local_experts"),
        ("qwen3-moe", "num_experts"),
        ("deepseek-v3", "n_routed_experts"),
        ("deepseek-v3", "kv_lora_rank"),
        ("llama-3-8b", "hidden_size"),
        ("qwen2-moe", "moe_intermediate_size"),
    ],
)
def test_missing_key_names_it_and_the_fix(stem: str, key: str) -> None:
    cfg = config(stem)
    del cfg[key]
    with pytest.raises(HFImportError, match=rf"lacks '{key}': add it"):
        model_spec_from_hf(cfg)


def test_dbrx_missing_nested_key_names_the_dotted_path() -> None:
    cfg = copy.deepcopy(config("dbrx"))
    del cfg["ffn_config"]["moe_top_k"]
    with pytest.raises(HFImportError, match=r"ffn_config\.moe_top_k"):
        model_spec_from_hf(cfg)


def test_non_integer_size_is_an_error() -> None:
    with pytest.raises(HFImportError, match=r"hidden_size.*integer"):
        model_spec_from_hf(config("llama-3-8b") | {"hidden_size": "4096"})


def test_spec_rule_violation_is_an_hf_import_error() -> None:
    """ModelSpec's own checks (here top_k > experts) surface as HFImportError, not pydantic's."""
    with pytest.raises(HFImportError, match="top_k"):
        model_spec_from_hf(config("mixtral-8x7b") | {"num_experts_per_tok": 9})


def test_yaml_has_header_naming_the_source_and_loads_back(tmp_path: Path) -> None:
    text = model_yaml_from_hf(HF / "deepseek-v3.json")
    lines = text.splitlines()
    assert lines[0].startswith("# Imported by moesim import-hf from ")
    assert "deepseek-v3.json" in lines[0] and "deepseek_v3" in lines[0]
    assert any("max_position_embeddings=163840" in x for x in lines if x.startswith("#"))
    spec = ModelSpec.model_validate(yaml.safe_load(text))
    assert spec == imported("deepseek-v3").model_copy(update={"source": spec.source})


def test_yaml_from_missing_file_or_bad_json(tmp_path: Path) -> None:
    with pytest.raises(HFImportError, match="no such file"):
        model_yaml_from_hf(tmp_path / "nope.json")
    bad = tmp_path / "config.json"
    bad.write_text('{\n  "model_type": "llama",\n  oops\n}\n')
    with pytest.raises(HFImportError, match=r"config\.json:3: not valid JSON"):
        model_yaml_from_hf(bad)
