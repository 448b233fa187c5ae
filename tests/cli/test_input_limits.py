"""Input limits and whole-file messages (issue 16): sizes that would run for minutes are
refused at once with the field, the documented limit and the fix; plan, sweep and import-hf
errors carry line numbers, and plan/sweep files report every problem at once."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.cli.conftest import run_main

ROOT = Path(__file__).parents[2]
DECODE = ROOT / "scenarios/serving/mixtral-8x7b-decode-8xh100.yaml"
POISSON = ROOT / "scenarios/serving/mixtral-8x7b-poisson-8xh100.yaml"
GRPO = ROOT / "scenarios/post-training/qwen3-30b-a3b-grpo-64xh100.yaml"
PLAN = ROOT / "scenarios/plans/mixtral-pretrain-30-days.yaml"
TINY = """\
name: tiny
model: mixtral-8x7b
cluster: {gpu: h100-sxm, nodes: 1}
parallel: {ep: 8}
workload: {stage: pretrain, seq_len: 4096, global_batch: 64}
"""


def assert_refused_quickly(args, *fragments: str, within_s: float = 20.0) -> None:
    t0 = time.perf_counter()
    r = run_main(*args)
    assert time.perf_counter() - t0 < within_s
    assert r.returncode == 2, r.output
    assert "Traceback" not in r.output
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ((DECODE, "--set", "workload.batch_size=1e9"), ("workload.batch_size", "100,000")),
        (
            (
                POISSON,
                "--set",
                "workload.arrival_rate_per_s=1e5",
                "--set",
                "workload.duration_s=3600",
            ),
            ("360,000,000 requests", "limit of 1,000,000", "shorten duration_s"),
        ),
        ((GRPO, "--set", "workload.group_size=1000000"), ("workload.group_size", "1,024")),
    ],
)
def test_sizes_past_the_simulators_reach_are_refused(args, fragments) -> None:
    assert_refused_quickly(("simulate", *args), *fragments)


def test_a_ten_million_point_sweep_is_counted_not_expanded(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    lists = "".join(f"  k{i}: [{', '.join(map(str, range(10)))}]\n" for i in range(7))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: huge\nbase: tiny.yaml\ngrid:\n{lists}")
    for command in ("validate", "sweep"):
        assert_refused_quickly(
            (command, sweep), f"{sweep}:3: grid", "10,000,000 points", "split the sweep"
        )


def test_validate_checks_a_bounded_prefix_of_a_large_sweep(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    values = ", ".join(str(v) for v in range(1, 5001))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: big\nbase: tiny.yaml\ngrid:\n  cost.usd_per_gpu_hour: [{values}]\n")
    r = run_main("validate", sweep)
    assert r.returncode == 0, r.output
    assert "5,000 points, 1,000 buildable of the first 1,000 checked" in r.stdout


def test_a_plan_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: bad\nmodel: mixtral-8x7b\ngpu: h100-sxm\n"
        "workload: {stage: pretrain, seq_len: 4096, global_batch: -5}\n"
        "search:\n  nodes: [0, 4]\n"
        "constraints: {deadline_days: -1}\n"
        "objective: speed\n"
        "simulate_max: 100000\n"
    )
    for command in ("validate", "plan"):
        assert_refused_quickly(
            (command, plan),
            f"{plan}:4: workload.global_batch",
            f"{plan}:6: search.nodes.0",
            f"{plan}:7: constraints.deadline_days",
            f"{plan}:8: objective",
            f"{plan}:9: simulate_max: 100000 is not an integer in [1, 512]",
        )


def test_the_shipped_plan_refuses_simulate_max_past_the_limit() -> None:
    assert_refused_quickly(("plan", PLAN, "--set", "simulate_max=100000"), "simulate_max")


def test_a_sweep_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nbase: tiny.yaml\ngrid:\n  parallel.ep: []\nepp: 3\n")
    assert_refused_quickly(
        ("validate", sweep), f"{sweep}:4: grid.parallel.ep", f"{sweep}:5: unknown sweep keys"
    )


def test_validate_refuses_a_sweep_whose_every_point_fails(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nbase: tiny.yaml\ngrid:\n  parallel.epp: [1, 2]\n")
    assert_refused_quickly(("validate", sweep), "none of the 2 points", "epp")


def test_import_hf_names_the_line_of_a_bad_key(tmp_path: Path) -> None:
    data = json.loads((ROOT / "tests/data/hf/mixtral-8x7b.json").read_text())
    data["num_local_experts"] = "eight"
    config = tmp_path / "config.json"
    config.write_text(json.dumps(data, indent=2))
    line = next(
        i for i, t in enumerate(config.read_text().splitlines(), 1) if "num_local_experts" in t
    )
    assert_refused_quickly(("import-hf", config), f"{config}:{line}: 'num_local_experts'")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"model_type": "mixtral", "hidden_size": ' + "9" * 5001 + "}", "over 4,300 digits"),
        ('{"a":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
    ],
)
def test_import_hf_refuses_huge_numbers_and_deep_nesting(tmp_path: Path, text, says) -> None:
    config = tmp_path / "config.json"
    config.write_text(text)
    assert_refused_quickly(("import-hf", config), str(config), says)
