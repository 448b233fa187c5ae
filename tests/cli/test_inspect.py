"""``moesim inspect``: the DESIGN.md contract keys, values that match the analytic layer, and
clean errors for unknown ids and bad model files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.analytic.flops import token_flops
from moesim.analytic.params import count_params
from moesim.catalog import load_model


def test_inspect_json_has_the_contract_keys(moesim) -> None:
    r = moesim("inspect", "mixtral-8x7b", "--json")
    assert r.returncode == 0, r.output
    info = json.loads(r.stdout)
    for key in ("params_total", "params_active", "model_flops_per_token", "params_breakdown"):
        assert key in info


def test_inspect_json_values_match_the_analytic_layer(moesim) -> None:
    info = json.loads(moesim("inspect", "mixtral-8x7b", "--json").stdout)
    m = load_model("mixtral-8x7b")
    counts = count_params(m)
    assert info["params_total"] == counts.total == 46_702_792_704
    assert info["params_active"] == counts.active == 12_879_925_248
    assert info["model_flops_per_token"] == token_flops(m, m.max_seq_len).model_flops
    assert info["params_breakdown"] == counts.breakdown()
    assert sum(info["params_breakdown"].values()) == info["params_total"]
    assert info["seq_len"] == 4096


def test_inspect_seq_len_option(moesim) -> None:
    info = json.loads(moesim("inspect", "llama-3-8b", "--json", "--seq-len", "1024").stdout)
    m = load_model("llama-3-8b")
    assert info["seq_len"] == 1024
    assert info["model_flops_per_token"] == token_flops(m, 1024).model_flops


def test_inspect_table_output(moesim) -> None:
    r = moesim("inspect", "deepseek-v3")
    assert r.returncode == 0, r.output
    assert "routed_experts" in r.stdout
    assert "active per token" in r.stdout
    assert "published: 671 B total, 37 B active" in r.stdout


def test_inspect_unknown_id_suggests_close_matches(moesim) -> None:
    r = moesim("inspect", "mixtrl-8x7b", "--json")
    assert r.returncode == 2
    assert "unknown model id 'mixtrl-8x7b'" in r.stderr
    assert "Did you mean: mixtral-8x7b" in r.stderr
    assert r.stdout == ""
    assert "Traceback" not in r.output


def test_inspect_model_yaml_with_bad_field_names_file_and_line(moesim, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\nvocab_size: 256\nn_layers: 2\nd_model: 64\nn_heads: 4\n"
        "ffn_hidden: 128\nn_kv_heads: 3\n"
    )
    r = moesim("inspect", path)
    assert r.returncode == 2
    assert f"{path}:" in r.stderr
    assert "n_kv_heads (3) must divide n_heads (4)" in r.stderr
    assert "Traceback" not in r.output


def test_inspect_model_yaml_unknown_key_names_its_line(moesim, tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(
        "name: t\nvocab_size: 256\nn_layers: 2\nd_model: 64\nn_heads: 4\nffn_hiden: 1\n"
    )
    r = moesim("inspect", path)
    assert r.returncode == 2
    assert f"{path}:6: ffn_hiden: unknown key 'ffn_hiden'" in r.stderr
    assert "Traceback" not in r.output


def test_inspect_missing_yaml_file(moesim, tmp_path: Path) -> None:
    r = moesim("inspect", tmp_path / "absent.yaml")
    assert r.returncode == 2
    assert "no such file" in r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize("model_id", ["tiny-moe", "deepseek-v3", "switch-base-128"])
def test_inspect_counts_moe_layers(moesim, model_id: str) -> None:
    info = json.loads(moesim("inspect", model_id, "--json").stdout)
    m = load_model(model_id)
    assert info["moe_layers"] == m.n_moe_layers + m.n_moe_encoder_layers


def test_inspect_headline_is_the_main_model_with_mtp_apart(moesim) -> None:
    """DeepSeek-V3 publishes 671 B total / 37 B active for the main model (arXiv:2412.19437)
    and counts its MTP module apart: the headline must match that within 3%, and the module
    and the sum with it are listed beside it."""
    info = json.loads(moesim("inspect", "deepseek-v3", "--json").stdout)
    counts = count_params(load_model("deepseek-v3"))
    assert abs(info["params_total"] / 671e9 - 1) < 0.03
    assert abs(info["params_active"] / 37e9 - 1) < 0.03
    assert info["params_mtp"] == counts.mtp > 0
    assert info["params_total_with_mtp"] == info["params_total"] + info["params_mtp"]
    assert sum(info["params_breakdown"].values()) == info["params_total_with_mtp"]
    table = moesim("inspect", "deepseek-v3").stdout
    assert "mtp module (apart)" in table
    no_mtp = json.loads(moesim("inspect", "mixtral-8x7b", "--json").stdout)
    assert "params_mtp" not in no_mtp
