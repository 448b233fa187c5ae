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
