"""``moesim schema`` describes the file users write: every shipped scenario file is valid under
it, catalog ids and inline specs both are, and a wrong key, an unknown id, a missing stage or a
boolean where a number goes is not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moesim.catalog import raw_entry
from moesim.scenario_io import ID_FIELDS, file_kind, load_yaml
from moesim.scenario_schema import file_schema

jsonschema = pytest.importorskip("jsonschema")

SCENARIOS = Path(__file__).parents[2] / "scenarios"
SHIPPED = sorted(p for p in SCENARIOS.rglob("*.yaml") if file_kind(load_yaml(p)[0]) == "scenario")

GOOD: dict[str, Any] = {
    "name": "schema-check",
    "model": "mixtral-8x7b",
    "cluster": {"gpu": "h100-sxm", "nodes": 8},
    "parallel": {"tp": 2, "pp": 2, "ep": 8},
    "workload": {"stage": "pretrain", "seq_len": 4096, "global_batch": 256},
}


@pytest.fixture(scope="module")
def validator():
    schema = file_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator, data: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)
    ]


def test_there_are_shipped_scenario_files() -> None:
    assert len(SHIPPED) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(SCENARIOS)))
def test_every_shipped_scenario_file_is_valid(validator, path: Path) -> None:
    data, _ = load_yaml(path)
    data.pop("expect", None)  # a published case's own block (scenarios/published/, CASES.md)
    assert errors(validator, data) == []


def test_catalog_ids_and_inline_specs_are_both_valid(validator) -> None:
    assert errors(validator, GOOD) == []
    inline = GOOD | {"model": raw_entry("models", "mixtral-8x7b")}
    inline["cluster"] = GOOD["cluster"] | {"gpu": raw_entry("gpus", "h100-sxm")}
    assert errors(validator, inline) == []
    assert errors(validator, GOOD | {"model": "models/mine.yaml"}) == []


def test_reward_and_critic_models_take_ids(validator) -> None:
    grpo = GOOD | {
        "workload": {"stage": "grpo", "global_batch": 64, "reward": "model"}
        | {"reward_model": "llama-3-8b"}
    }
    assert errors(validator, grpo) == []
    ppo = GOOD | {
        "workload": {"stage": "ppo", "global_batch": 64, "critic_model": "tiny-dense"}
        | {"reward_model": raw_entry("models", "tiny-dense")}
    }
    assert errors(validator, ppo) == []


def _spec_fields(model: type, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Paths of every field of ``model`` (recursively, workload union members included) whose
    type is a ModelSpec or a GPUSpec: the fields a scenario file may give as an id."""
    import typing

    from pydantic import BaseModel

    from moesim.specs import GPUSpec, ModelSpec

    def classes(tp) -> list[type]:
        if isinstance(tp, type):
            return [tp]
        return [c for a in typing.get_args(tp) for c in classes(a)]

    out: set[tuple[str, ...]] = set()
    for name, field in model.model_fields.items():
        for cls in classes(field.annotation):
            if cls in (ModelSpec, GPUSpec):
                out.add((*path, name))
            elif issubclass(cls, BaseModel) and cls not in (ModelSpec, GPUSpec):
                out |= _spec_fields(cls, (*path, name))
    return out


def test_every_field_that_holds_a_model_or_gpu_takes_an_id() -> None:
    """ID_FIELDS is complete: a new field typed ModelSpec or GPUSpec anywhere in a Scenario
    must be listed there, or files could not give it as a catalog id."""
    from moesim.specs import Scenario

    assert _spec_fields(Scenario) == set(ID_FIELDS)
    file_schema()  # asserts each ID_FIELDS entry was found in the schema


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"parallel": {"tp": 2, "zero": 1}}, "an unknown key"),
        ({"cost": {"usd_per_gpu_hr": 2.0}}, "an unknown key"),
        ({"colour": "blue"}, "an unknown top-level key"),
        ({"model": "mixtral"}, "an id the catalog lacks"),
        ({"cluster": {"gpu": "h100", "nodes": 8}}, "an id the catalog lacks"),
        ({"model": 5}, "neither an id nor a spec"),
        ({"workload": {"seq_len": 4096, "global_batch": 256}}, "no stage"),
        ({"workload": {"stage": "pretrian", "global_batch": 256}}, "an unknown stage"),
        ({"parallel": {"tp": True}}, "a boolean for an integer"),
        ({"cluster": {"gpu": "h100-sxm", "nodes": 0}}, "a non-positive size"),
    ],
)
def test_a_bad_file_fails_the_schema(validator, bad: dict[str, Any], why: str) -> None:
    assert errors(validator, GOOD | bad), why


def test_schema_command_prints_the_file_schema(moesim, tmp_path: Path) -> None:
    out = tmp_path / "scenario.schema.json"
    r = moesim("schema", "-o", out)
    assert r.returncode == 0, r.output
    assert json.loads(out.read_text()) == file_schema()
    assert json.loads(out.read_text())["$schema"].endswith("2020-12/schema")
