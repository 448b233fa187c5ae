"""Every catalog model: loads, cites a source, and its parameter count matches the published one.

Tolerance rule for ``published_params_total`` / ``published_params_active``:

    |count − published| ≤ max(3% of published, half a unit in the last published digit)

The published figures are in billions as their sources write them (7B, 46.7B, 8.03B, 0.223B).
3% absorbs what papers leave out or round (a few norms, a rounded vocabulary); but a figure
written with one significant digit promises less than that: Fedus et al. write Switch-Base-128 as
"7B", which stands for anything in [6.5B, 7.5B), and the model holds 7.42B. Half a unit in the
last digit (0.5B for "7B", 0.05B for "46.7B", 0.5B for "70B") is what such a figure claims, so the
wider of the two bounds is used.

The counts compared are ``total_main`` / ``active_main``: without DeepSeek-V3's MTP module, which
its paper's 671B / 37B leave out.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from moesim.analytic.params import count_params
from moesim.catalog import CatalogError, load_model, model_ids, raw_entry
from moesim.specs import ModelSpec

MODELS = model_ids()
WITH_TOTAL = [i for i in MODELS if load_model(i).published_params_total]
WITH_ACTIVE = [i for i in MODELS if load_model(i).published_params_active]
DENSE = [i for i in MODELS if not load_model(i).is_moe]
MOE = [i for i in MODELS if load_model(i).is_moe]


def published_unit(figure: float) -> float:
    """One unit in the last digit of a figure as written in billions (7e9 → 1e9, 46.7e9 → 1e8).

    Trailing zeros of a whole number count as written digits ("70B" → 1e9, not 1e10).
    """
    billions = Decimal(str(figure)) / Decimal(10**9)
    if billions == billions.to_integral_value():
        return 1e9
    return 1e9 * 10.0 ** billions.normalize().as_tuple().exponent


def tolerance(figure: float) -> float:
    return max(0.03 * figure, 0.5 * published_unit(figure))


@pytest.mark.parametrize(
    ("figure", "unit"),
    [(7e9, 1e9), (70e9, 1e9), (46.7e9, 1e8), (8.03e9, 1e7), (0.223e9, 1e6), (671e9, 1e9)],
)
def test_published_unit_reads_the_last_written_digit(figure: float, unit: float) -> None:
    assert published_unit(figure) == pytest.approx(unit)


def test_tolerance_is_the_wider_bound() -> None:
    assert tolerance(7e9) == pytest.approx(0.5e9)  # "7B": the half unit beats 3% (0.21B)
    assert tolerance(46.7e9) == pytest.approx(0.03 * 46.7e9)  # 3% beats 0.05B


def test_the_catalog_has_the_seed_models() -> None:
    for required in ("mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b", "dbrx", "llama-3-8b"):
        assert required in MODELS


@pytest.mark.parametrize("model_id", MODELS)
def test_model_loads_with_its_id_as_name_and_a_source(model_id: str) -> None:
    m = load_model(model_id)
    assert isinstance(m, ModelSpec)
    assert m.name == model_id
    assert m.source.strip(), f"{model_id} cites no source"


@pytest.mark.parametrize("model_id", WITH_TOTAL)
def test_total_params_match_published(model_id: str) -> None:
    m = load_model(model_id)
    assert m.published_params_total is not None
    count = count_params(m).total_main
    assert abs(count - m.published_params_total) <= tolerance(m.published_params_total), (
        f"{model_id}: {count / 1e9:.3f}B counted, {m.published_params_total / 1e9:g}B published"
    )


@pytest.mark.parametrize("model_id", WITH_ACTIVE)
def test_active_params_match_published(model_id: str) -> None:
    m = load_model(model_id)
    assert m.published_params_active is not None
    count = count_params(m).active_main
    assert abs(count - m.published_params_active) <= tolerance(m.published_params_active), (
        f"{model_id}: {count / 1e9:.3f}B counted, {m.published_params_active / 1e9:g}B published"
    )


def test_only_the_coarse_figure_needs_the_half_unit_rule() -> None:
    """The half-unit allowance must not hide a real miss: only Switch-Base-128 ("7B") uses it."""
    needs_it = []
    for model_id in WITH_TOTAL:
        m = load_model(model_id)
        assert m.published_params_total is not None
        off = abs(count_params(m).total_main - m.published_params_total)
        if off > 0.03 * m.published_params_total:
            needs_it.append(model_id)
    assert needs_it == ["switch-base-128"]


@pytest.mark.parametrize("model_id", DENSE)
def test_dense_model_active_equals_total(model_id: str) -> None:
    m = load_model(model_id)
    counts = count_params(m)
    assert counts.active == counts.total
    if m.published_params_total and m.published_params_active:
        assert m.published_params_active == m.published_params_total


@pytest.mark.parametrize("model_id", MOE)
def test_moe_model_active_below_total(model_id: str) -> None:
    counts = count_params(load_model(model_id))
    assert 0 < counts.active < counts.total


@pytest.mark.parametrize("model_id", MODELS)
def test_breakdown_sums_to_total(model_id: str) -> None:
    counts = count_params(load_model(model_id))
    assert sum(counts.breakdown().values()) == counts.total


def test_unknown_model_id_lists_close_matches() -> None:
    with pytest.raises(CatalogError, match=r"unknown model id 'mixtrl-8x7b'\. Did you mean: "):
        load_model("mixtrl-8x7b")
    with pytest.raises(CatalogError) as info:
        load_model("mixtrl-8x7b")
    close = str(info.value).split("Did you mean: ")[1].split("?")[0].split(", ")
    assert close[0] == "mixtral-8x7b"


def test_unknown_id_without_close_match_still_lists_known_ids() -> None:
    with pytest.raises(CatalogError) as info:
        load_model("zzzzzzzzzzzz")
    assert "Did you mean" not in str(info.value)
    assert "Known models: " in str(info.value) and "llama-3-8b" in str(info.value)


def test_model_loads_from_a_yaml_path(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw_entry("models", "tiny-moe") | {"name": "mine"}))
    m = load_model(str(path))
    assert m.name == "mine"
    assert count_params(m).total == count_params(load_model("tiny-moe")).total


def test_raw_entry_returns_a_copy() -> None:
    """Callers edit the dict (scenario overrides); the cached entry must not change."""
    entry = raw_entry("models", "tiny-moe")
    entry["n_layers"] = 99
    entry["moe"]["top_k"] = 99
    fresh = raw_entry("models", "tiny-moe")
    assert fresh["n_layers"] == 4
    assert fresh["moe"]["top_k"] == 2
