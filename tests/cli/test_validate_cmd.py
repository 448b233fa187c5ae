"""``moesim validate`` and ``moesim schema``: exit 0 on good files, exit 2 with
``file:line: field: message`` on bad ones, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

GOOD = """\
name: mixtral-64xh100
model: mixtral-8x7b
cluster:
  gpu: h100-sxm
  nodes: 8
parallel:
  tp: 2
  pp: 2
  ep: 8
workload:
  stage: pretrain
  seq_len: 4096
  global_batch: 256
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_validate_good_scenario(moesim, tmp_path: Path) -> None:
    r = moesim("validate", write(tmp_path, GOOD))
    assert r.returncode == 0, r.output
    assert "ok" in r.stdout
    assert "tp 2 · cp 1 · pp 2 · dp 16" in r.stdout


def test_validate_json_reports_the_resolved_layout(moesim, tmp_path: Path) -> None:
    r = moesim("validate", write(tmp_path, GOOD), "--json")
    assert r.returncode == 0, r.output
    out = json.loads(r.stdout)
    assert out["gpus"] == 64
    assert out["parallel"]["dp"] == 16  # derived: 64 / (2·2)
    assert out["expert_data_parallel"] == 2 * 16 // 8


def test_validate_shipped_scenarios(moesim) -> None:
    root = Path(__file__).parents[2] / "scenarios"
    files = sorted(root.rglob("*.yaml"))  # scenarios, comparisons, sweeps, plans
    # published cases (scenarios/published/) carry an expect block: `moesim reproduce` reads them
    files = [p for p in files if "published" not in p.relative_to(root).parts]
    if not files:
        pytest.skip("no scenarios/ yet")
    for path in files:
        r = moesim("validate", path)
        assert r.returncode == 0, f"{path}: {r.output}"


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("  tp: 2\n", "  tp: 16\n", ":7: parallel.tp: parallel.tp (16) must divide the key/value"),
        ("  ep: 8\n", "  ep: 16\n", ":9: parallel.ep: parallel.ep (16) must divide"),
        ("  global_batch: 256\n", "  global_batch: 250\n", ":13: workload.global_batch: 250"),
        ("  pp: 2\n", "  pp: 2\n  dp: 3\n", ":6: parallel: tp·cp·pp·dp = 2·1·2·3 = 12"),
        ("  ep: 8\n", "  ep: 8\n  zero: 1\n", ":10: parallel.zero: unknown key 'zero'"),
        ("  nodes: 8\n", "  nodes: 0\n", ":5: cluster.nodes: Input should be greater than 0"),
    ],
)
def test_validate_bad_scenario_names_file_line_field(
    moesim, tmp_path: Path, old: str, new: str, where: str
) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    r = moesim("validate", path)
    assert r.returncode == 2
    assert f"{path}{where}" in r.stderr, r.stderr
    assert "Traceback" not in r.output


def test_validate_unknown_gpu_id(moesim, tmp_path: Path) -> None:
    r = moesim("validate", write(tmp_path, GOOD.replace("h100-sxm", "h100-sxn")))
    assert r.returncode == 2
    assert "cluster.gpu: unknown gpu id 'h100-sxn'. Did you mean: h100-sxm" in r.stderr
    assert "Traceback" not in r.output


def test_validate_invalid_yaml_names_the_line(moesim, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  tp: 2\n", "  tp: [2\n"))
    r = moesim("validate", path)
    assert r.returncode == 2
    assert f"{path}:8: not valid YAML" in r.stderr
    assert "Traceback" not in r.output


def test_validate_tab_indented_yaml(moesim, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("  tp: 2\n", "\ttp: 2\n"))
    r = moesim("validate", path)
    assert r.returncode == 2
    assert f"{path}:7: not valid YAML" in r.stderr
    assert "Traceback" not in r.output


def test_validate_missing_file(moesim, tmp_path: Path) -> None:
    r = moesim("validate", tmp_path / "absent.yaml")
    assert r.returncode == 2
    assert "no such file" in r.stderr
    assert "Traceback" not in r.output


def test_unknown_command_is_a_usage_error(moesim) -> None:
    r = moesim("simulatee", "x.yaml")
    assert r.returncode == 2
    assert "Traceback" not in r.output


def test_schema_prints_the_scenario_json_schema(moesim) -> None:
    r = moesim("schema")
    assert r.returncode == 0, r.output
    schema = json.loads(r.stdout)
    assert schema["title"] == "Scenario"
    assert schema["additionalProperties"] is False
    top = {"name", "model", "cluster", "parallel", "precision", "routing", "workload", "cost"}
    assert top <= set(schema["properties"])
    assert {"name", "model", "cluster", "workload"} <= set(schema["required"])


def test_schema_out_writes_a_file(moesim, tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    r = moesim("schema", "--out", out)
    assert r.returncode == 0, r.output
    assert json.loads(out.read_text())["title"] == "Scenario"
