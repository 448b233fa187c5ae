"""One reader for the YAML people write: scenario files and model/GPU files alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.catalog import CatalogError, load_model
from moesim.scenario_io import ScenarioError, load_yaml


def test_a_model_file_with_a_key_given_twice_is_refused_like_a_scenario(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("name: a\nvocab_size: 10\nname: b\n")
    with pytest.raises(CatalogError, match=r"m\.yaml:3: name: duplicate key 'name'"):
        load_model(str(path))
    with pytest.raises(ScenarioError, match=r"m\.yaml:3: name: duplicate key 'name'"):
        load_yaml(path)


def test_yaml_1_2_floats_and_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes("\ufeffx: 1.0e12\n".encode())
    data, lines = load_yaml(path)
    assert data == {"x": 1.0e12} and lines == {("x",): 1}


@pytest.mark.parametrize(
    ("text", "value"),
    [("010", 10), ("032", 32), ("0o10", 8), ("0x1F", 31), ("-7", -7), ("1_000", "1_000")],
)
def test_integers_are_read_as_yaml_1_2(tmp_path: Path, text: str, value: object) -> None:
    """`nodes: 010` is ten (YAML 1.1 read eight, and `032` twenty-six); 0o and 0x say octal and
    hex; YAML 1.1's underscores are not a number (the schema then asks for one)."""
    f = tmp_path / "n.yaml"
    f.write_text(f"nodes: {text}\n")
    assert load_yaml(f)[0]["nodes"] == value


def test_alias_cycles_deep_nesting_and_billion_laughs_are_named_errors(tmp_path: Path) -> None:
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("a: &a {b: *a}\n")
    with pytest.raises(ScenarioError, match="cycle"):
        load_yaml(cycle)
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ScenarioError, match="nested too deeply"):
        load_yaml(deep)
    laughs = tmp_path / "laughs.yaml"
    rows = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    rows += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    laughs.write_text("\n".join(rows) + "\n")
    with pytest.raises(ScenarioError, match="aliases expand"):
        load_yaml(laughs)
    reuse = tmp_path / "reuse.yaml"  # an anchor reused a few times is fine
    reuse.write_text("base: &b {tp: 2}\none: *b\ntwo: *b\n")
    assert load_yaml(reuse)[0]["two"] == {"tp": 2}
