"""faults and reliability in a scenario (moesim/specs/faults.py): bad input names the field and
the fix; the JSON Schema carries both with their descriptions."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from moesim.scenario_io import ScenarioError, scenario_from_dict
from moesim.scenario_schema import file_schema

BASE: dict[str, Any] = {
    "name": "dense-16",
    "model": "llama-3-8b",
    "cluster": {"gpu": "h100-sxm", "nodes": 2, "gpus_per_node": 8},
    "parallel": {"tp": 2, "pp": 2},
    "workload": {"stage": "pretrain", "seq_len": 1024, "global_batch": 16},
}
REL = {"gpu_mtbf_hours": 50_000, "checkpoint_write_s": 30, "restart_s": 600}


def build(**top: Any):
    d = copy.deepcopy(BASE)
    d.update(top)
    return scenario_from_dict(d)


def error_of(**top: Any) -> str:
    with pytest.raises(ScenarioError) as info:
        build(**top)
    return str(info.value)


def test_faults_and_reliability_are_optional_and_parsed() -> None:
    s = build()
    assert s.faults == [] and s.reliability is None
    s = build(
        faults=[
            {"kind": "slow_gpu", "rank": 15, "factor": 1.3},
            {"kind": "slow_link", "node": 1, "factor": 2},
            {"kind": "slow_link", "rank": 3, "link": "nvlink", "factor": 1.5},
        ],
        reliability=REL,
    )
    assert [f.kind for f in s.faults] == ["slow_gpu", "slow_link", "slow_link"]
    assert s.faults[1].link == "network"
    assert s.reliability is not None and s.reliability.checkpoint_interval_s == "auto"


def test_rank_outside_the_cluster() -> None:
    msg = error_of(faults=[{"kind": "slow_gpu", "rank": 16, "factor": 2}])
    assert "faults[0].rank" in msg and "16 GPUs" in msg and "below 16" in msg


def test_node_outside_the_cluster() -> None:
    msg = error_of(faults=[{"kind": "slow_gpu", "rank": 0, "factor": 2},
                           {"kind": "slow_link", "node": 2, "factor": 2}])  # fmt: skip
    assert "faults[1].node" in msg and "below 2" in msg


@pytest.mark.parametrize("kind", ["slow_gpu", "slow_link"])
def test_a_factor_below_one_would_be_faster(kind: str) -> None:
    msg = error_of(faults=[{"kind": kind, "rank": 0, "factor": 0.5}])
    assert "factor" in msg and "≥ 1" in msg


def test_factor_one_is_healthy_and_accepted() -> None:
    assert build(faults=[{"kind": "slow_gpu", "rank": 0, "factor": 1}]).faults[0].factor == 1.0


@pytest.mark.parametrize("where", [{}, {"rank": 0, "node": 0}])
def test_slow_link_names_rank_or_node(where: dict) -> None:
    msg = error_of(faults=[{"kind": "slow_link", "factor": 2, **where}])
    assert "rank" in msg and "node" in msg and "exactly one" in msg


def test_unknown_fault_kind() -> None:
    msg = error_of(faults=[{"kind": "dead_gpu", "rank": 0, "factor": 2}])
    assert "slow_gpu" in msg and "slow_link" in msg


def test_faults_refused_for_serving() -> None:
    work = {"stage": "inference", "prompt_len": 128, "output_len": 16, "batch_size": 8}
    msg = error_of(workload=work, faults=[{"kind": "slow_gpu", "rank": 0, "factor": 2}])
    assert "faults" in msg and "remove faults" in msg


def test_reliability_needs_a_write_time_or_bandwidth() -> None:
    msg = error_of(reliability={"gpu_mtbf_hours": 1000, "restart_s": 60})
    assert "checkpoint_write_s" in msg and "checkpoint_write_GBps" in msg


def test_reliability_needs_the_users_mtbf() -> None:
    msg = error_of(reliability={"checkpoint_write_s": 30, "restart_s": 60})
    assert "gpu_mtbf_hours" in msg


def test_reliability_interval_auto_or_positive() -> None:
    assert (
        build(reliability={**REL, "checkpoint_interval_s": 900}).reliability.checkpoint_interval_s
        == 900
    )
    msg = error_of(reliability={**REL, "checkpoint_interval_s": "sometimes"})
    assert "checkpoint_interval_s" in msg


def test_schema_documents_faults_and_reliability() -> None:
    schema = file_schema()
    props = schema["properties"]
    assert "description" in props["faults"] and "description" in props["reliability"]
    defs = schema["$defs"]
    for name in ("SlowGPU", "SlowLink", "ReliabilitySpec"):
        for field, spec in defs[name]["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"
