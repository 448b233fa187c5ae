"""moesim.reproduce.cases: the expect block is validated with file:line: expect.field errors."""

from __future__ import annotations

import pytest

from moesim.reproduce.cases import CLASSES, find_case_files, load_case
from moesim.scenario_io import ScenarioError


def test_a_good_case_loads(write_case) -> None:
    case = load_case(write_case("sub/my-case"))
    assert case.id == "my-case"
    assert case.expect.case_class == "moe_training"
    assert case.expect.value == pytest.approx(0.001)
    assert case.expect.assumptions == ["none"]
    assert case.scenario is not None and case.scenario.name == "my-case"


def test_classes_are_the_contract() -> None:
    assert set(CLASSES) == {
        "moe_training", "dense_training", "communication", "serving", "memory", "post_training"
    }  # fmt: skip


def test_missing_expect_field_names_it(write_case, case_text) -> None:
    text = case_text().replace("  tolerance: 0.15\n", "")
    path = write_case(text=text)
    with pytest.raises(ScenarioError, match=r":6: expect\.tolerance: required and missing"):
        load_case(path)
    assert str(path) in _message(path)


def test_bad_class_names_the_field_and_the_choices(write_case) -> None:
    path = write_case(cls="moe_trainign")
    msg = _message(path)
    assert f"{path}:7: expect.class: must be one of moe_training |" in msg
    assert "'moe_trainign'" in msg


@pytest.mark.parametrize("value", ["fast", "'39.5'", "true"])
def test_non_numeric_value_names_the_field(write_case, value: str) -> None:
    path = write_case(value=value)
    assert f"{path}:9: expect.value: " in _message(path)


@pytest.mark.parametrize("value", ["0", "-1.5"])
def test_value_must_be_positive(write_case, value: str) -> None:
    assert "expect.value: must be a positive number" in _message(write_case(value=value))


def test_unknown_expect_key_and_blank_source(write_case, case_text) -> None:
    path = write_case(text=case_text().replace("tolerance:", "tolerence:"))
    msg = _message(path)
    assert "expect.tolerence: unknown key 'tolerence'" in msg
    assert "expect.tolerance: required and missing" in msg
    blank = write_case("b", text=case_text().replace('"fixture: no publication"', '"  "'))
    assert "expect.source:" in _message(blank)


def test_no_expect_block_is_an_error(write_case, scenario_text) -> None:
    path = write_case(text=scenario_text)
    assert "expect: required and missing" in _message(path)


def test_expect_must_be_a_mapping(write_case, scenario_text) -> None:
    path = write_case(text=scenario_text + "expect: 3\n")
    assert f"{path}:6: expect: expected a mapping" in _message(path)


def test_bad_scenario_strict_raises_lenient_keeps_the_reason(write_case) -> None:
    path = write_case(ep=3)  # ep 3 divides neither 8 experts nor 8 GPUs
    with pytest.raises(ScenarioError, match=r"parallel\.ep"):
        load_case(path)
    case = load_case(path, strict=False)
    assert case.scenario is None
    assert case.load_error is not None and "parallel.ep" in case.load_error


def test_unsupported_case_with_a_scenario_moesim_cannot_express(write_case) -> None:
    path = write_case(ep=3, extra="  unsupported: 'needs ep 3'\n")
    case = load_case(path)  # strict, but the case says why it cannot be built
    assert case.scenario is None
    assert case.expect.unsupported == "needs ep 3"


def test_find_case_files_is_recursive_and_sorted(write_case, tmp_path) -> None:
    b = write_case("b/z")
    a = write_case("a/y")
    (tmp_path / "notes.txt").write_text("x")
    assert find_case_files(tmp_path) == [a, b]
    assert find_case_files(a) == [a]


def _message(path) -> str:
    with pytest.raises(ScenarioError) as e:
        load_case(path)
    return str(e.value)
