"""``moesim import-hf``: YAML out, round trip through ``moesim inspect``, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.analytic.params import count_params
from moesim.catalog import load_model

HF = Path(__file__).parents[1] / "data" / "hf"
SAMPLES = sorted(p.stem for p in HF.glob("*.json") if p.stem != "gpt2")


@pytest.mark.parametrize("stem", SAMPLES)
def test_import_hf_yaml_round_trips_through_inspect(moesim, tmp_path: Path, stem: str) -> None:
    out = tmp_path / f"{stem}.yaml"
    r = moesim("import-hf", HF / f"{stem}.json", "--out", out)
    assert r.returncode == 0, r.output
    r = moesim("inspect", out, "--json")
    assert r.returncode == 0, r.output
    info = json.loads(r.stdout)
    from moesim.hf_import import model_spec_from_hf

    expected = count_params(model_spec_from_hf(json.loads((HF / f"{stem}.json").read_text())))
    assert info["params_total"] == expected.total_main
    assert info["params_active"] == expected.active_main


def test_import_hf_to_stdout_matches_catalog(moesim, tmp_path: Path) -> None:
    r = moesim("import-hf", HF / "mixtral-8x7b.json", "--name", "mixtral-import")
    assert r.returncode == 0, r.output
    assert r.stdout.startswith("# Imported by moesim import-hf")
    path = tmp_path / "m.yaml"
    path.write_text(r.stdout)
    info = json.loads(moesim("inspect", path, "--json").stdout)
    assert info["name"] == "mixtral-import"
    assert info["params_total"] == count_params(load_model("mixtral-8x7b")).total_main


def test_import_hf_unsupported_model_type_exits_2(moesim) -> None:
    r = moesim("import-hf", HF / "gpt2.json")
    assert r.returncode == 2
    assert "model_type 'gpt2' is not supported" in r.stderr
    assert "Traceback" not in r.output


def test_import_hf_missing_file_exits_2(moesim, tmp_path: Path) -> None:
    r = moesim("import-hf", tmp_path / "config.json")
    assert r.returncode == 2
    assert "no such file" in r.stderr
    assert "Traceback" not in r.output
