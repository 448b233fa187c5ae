"""``moesim reproduce``, and ``validate`` / ``simulate`` on a published case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CASE = """\
# fixture published case
name: {id}
model: tiny-moe
cluster: {{gpu: h100-sxm, nodes: 1, gpus_per_node: 8}}
parallel: {{tp: 1, pp: 1, ep: {ep}}}
workload: {{stage: pretrain, seq_len: 256, global_batch: 16}}
expect:
  class: {cls}
  metric: {metric}
  value: {value}
  tolerance: 0.15
  source: "fixture: no publication"
"""


def write(root: Path, rel: str, cls="moe_training", metric="step_time_s", value=0.001, ep=8):
    path = root / f"{rel}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CASE.format(id=path.stem, cls=cls, metric=metric, value=value, ep=ep))
    return path


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    root = tmp_path / "published"
    write(root, "moe_training/fast", value=0.001)
    write(root, "memory/mem", cls="memory", metric="memory_per_gpu_GB.total", value=100.0)
    write(root, "moe_training/broken", ep=3)
    return root


def test_json_contract(moesim, suite: Path) -> None:
    r = moesim("reproduce", suite, "--json")
    assert r.returncode == 0, r.output
    doc = json.loads(r.stdout)
    cases = {c["id"]: c for c in doc["cases"]}
    assert set(cases) == {"fast", "mem", "broken"}
    for c in cases.values():
        assert {"id", "class", "metric", "published", "predicted", "error", "source"} <= set(c)
    assert cases["mem"]["class"] == "memory"
    assert cases["mem"]["error"] == pytest.approx(cases["mem"]["predicted"] / 100.0 - 1)
    assert cases["mem"]["within"] is False  # ~1 GB against 100: a result, exit code 0
    assert cases["broken"]["error"] is None and "parallel.ep" in cases["broken"]["reason"]
    assert doc["summary"]["overall"]["n"] == 3
    assert doc["summary"]["overall"]["n_simulated"] == 2


def test_table_and_summary(moesim, suite: Path) -> None:
    r = moesim("reproduce", suite)
    assert r.returncode == 0, r.output
    for word in ("fast", "mem", "broken", "memory_per_gpu_GB.total", "✗", "overall", "parallel.ep"):
        assert word in r.stdout, word
    assert "|error| per class" in r.stdout


def test_html_report_holds_the_figures(moesim, suite: Path, tmp_path: Path) -> None:
    out = tmp_path / "r" / "published.html"
    r = moesim("reproduce", suite, "--html", out)
    assert r.returncode == 0, r.output
    page = out.read_text()
    assert "Plotly.newPlot" in page and "<script src=" not in page  # plotly.js inlined
    assert "Predicted against published" in page and "y = x" in page
    assert "fixture: no publication" in page  # hover text: the source


def test_markdown_table(moesim, suite: Path) -> None:
    r = moesim("reproduce", suite, "--markdown")
    assert r.returncode == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("_Made ") and "moesim reproduce --markdown" in lines[0]
    assert "| case | class | metric | published | predicted | error | within |" in lines
    assert any(line.startswith("| mem | memory |") for line in lines)
    assert any(line.startswith("| **overall** | 3 | 2 |") for line in lines)


def test_write_baseline(moesim, suite: Path) -> None:
    r = moesim("reproduce", suite, "--write-baseline", "--json")
    assert r.returncode == 0, r.output
    base = json.loads((suite / "baseline.json").read_text())
    assert set(base) == {"fast", "mem", "broken"}
    assert base["broken"]["error"] is None and base["broken"]["reason"]
    by_id = {c["id"]: c for c in json.loads(r.stdout)["cases"]}
    assert base["mem"]["error"] == pytest.approx(by_id["mem"]["error"])


def test_no_cases_and_a_broken_expect_are_bad_input(moesim, tmp_path: Path) -> None:
    r = moesim("reproduce", tmp_path)
    assert r.returncode == 2 and "no published cases found" in r.stderr
    write(tmp_path, "x/bad", cls="trainig")
    r = moesim("reproduce", tmp_path)
    assert r.returncode == 2
    assert "bad.yaml:8: expect.class: must be one of" in r.stderr
    assert "Traceback" not in r.output


def test_validate_and_simulate_accept_a_case(moesim, tmp_path: Path) -> None:
    path = write(tmp_path, "c", value=0.001)
    r = moesim("validate", path)
    assert r.returncode == 0, r.output
    assert "expect step_time_s = 0.001" in r.stdout
    r = moesim("simulate", path)
    assert r.returncode == 0, r.output
    assert "published step_time_s: 0.001, predicted" in r.stdout
    r = moesim("simulate", path, "--json")
    assert r.returncode == 0, r.output
    assert "step_time_s" in json.loads(r.stdout)


def test_validate_names_a_bad_expect_field(moesim, tmp_path: Path) -> None:
    path = write(tmp_path, "c", value="'fast'")
    r = moesim("validate", path)
    assert r.returncode == 2
    assert f"{path}:10: expect.value: expected a number" in r.stderr
