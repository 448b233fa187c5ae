"""What a hand-written file can get wrong beyond the spec rules: bytes that are not text, a
model file that is broken YAML, keys given twice, booleans where numbers go, catalog ids that do
not exist, a missing stage, a value out of range. Each is a ScenarioError naming the file, the
line, the field and the fix (never a parser traceback or a silent guess).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel
from scenario_files import BASE, ScenarioFiles

from moesim.scenario_io import ScenarioError, load_scenario, load_yaml
from moesim.specs import Scenario
from moesim.specs.base import NO_BOOL_FLOAT, NO_BOOL_INT

BINARY = bytes(range(0x80, 0x100)) * 2


# -- bytes and YAML ---------------------------------------------------------------------------
def test_binary_file_is_not_utf8_text(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"name: x\n" + BINARY)
    with pytest.raises(ScenarioError, match=rf"^{path}:2: not UTF-8 text \(byte 0x80"):
        load_yaml(path)


def test_utf8_with_a_byte_order_mark_is_read(files: ScenarioFiles) -> None:
    path = files.write(BASE)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_scenario(path).name == BASE["name"]


def test_model_file_that_is_broken_yaml(files: ScenarioFiles) -> None:
    (files.root / "broken-model.yaml").write_text("a: [\n")
    path = files.write({**BASE, "model": "broken-model.yaml"})
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: model: ")  # the scenario's line naming the file
    assert f"{files.root / 'broken-model.yaml'}:2: not valid YAML" in message


def test_model_file_that_is_binary(files: ScenarioFiles) -> None:
    (files.root / "bin-model.yaml").write_bytes(BINARY)
    path = files.write({**BASE, "model": "bin-model.yaml"})
    with pytest.raises(ScenarioError, match=rf"^{path}:2: model: .*bin-model.yaml:1: not UTF-8"):
        load_scenario(path)


def test_model_file_that_does_not_exist(files: ScenarioFiles) -> None:
    files.error({"model": "absent-model.yaml"}, "model", "no such model file 'absent-model.yaml'")


def test_model_file_relative_to_the_scenario(files: ScenarioFiles, tmp_path: Path) -> None:
    import yaml

    from moesim.catalog import raw_entry

    (files.root / "mine.yaml").write_text(yaml.safe_dump(raw_entry("models", "mixtral-8x7b")))
    assert load_scenario(files.write({**BASE, "model": "mine.yaml"})).model.name == "mixtral-8x7b"


@pytest.mark.parametrize(
    ("text", "line", "dotted", "first"),
    [
        ("name: t\nname: u\n", 2, "name", 1),
        ("cluster:\n  gpu: h100-sxm\n  nodes: 1\n  nodes: 2\n", 4, "cluster.nodes", 3),
    ],
)
def test_duplicate_key_is_refused_at_its_line(
    files: ScenarioFiles, text: str, line: int, dotted: str, first: int
) -> None:
    path = files.write(text)
    with pytest.raises(ScenarioError) as info:
        load_yaml(path)
    assert str(info.value) == (
        f"{path}:{line}: {dotted}: duplicate key '{dotted.split('.')[-1]}' (first given at line "
        f"{first}): keep one of them"
    )


def test_same_key_in_different_mappings_is_fine(files: ScenarioFiles) -> None:
    data, _ = load_yaml(files.write("a: {n: 1}\nb: {n: 2}\n"))
    assert data == {"a": {"n": 1}, "b": {"n": 2}}


@pytest.mark.parametrize(
    ("text", "value"), [("1.0e12", 1.0e12), ("1e12", 1e12), ("2.5E-3", 2.5e-3)]
)
def test_exponent_floats_read_as_numbers(files: ScenarioFiles, text: str, value: float) -> None:
    """YAML 1.2 (and JSON Schema) read 1.0e12 as a number; PyYAML's YAML 1.1 as a string."""
    data, _ = load_yaml(files.write(f"x: {text}\nname: 1.0e12x\n"))
    assert data["x"] == value and isinstance(data["x"], float)
    assert data["name"] == "1.0e12x"


# -- catalog ids and what goes where a spec goes ------------------------------------------------
def test_unknown_gpu_id_names_the_line_of_the_field(files: ScenarioFiles) -> None:
    files.error(
        {"cluster": {"gpu": "h100"}}, "cluster.gpu", "unknown gpu id 'h100'", "Did you mean"
    )


def test_unknown_reward_model_id_names_its_line(files: ScenarioFiles) -> None:
    workload = {"stage": "grpo", "seq_len": None, "reward": "model", "reward_model": "lama"}
    files.error({"workload": workload}, "workload.reward_model", "unknown model id 'lama'")


@pytest.mark.parametrize("value", [5, [1, 2], None])
def test_model_that_is_neither_an_id_nor_a_spec(files: ScenarioFiles, value: Any) -> None:
    files.error(
        {},
        "model",
        "expected a catalog model id (e.g. mixtral-8x7b), the path of a model YAML file, or an "
        "inline model spec",
        base={**BASE, "model": value},
    )


def test_gpu_that_is_neither_an_id_nor_a_spec(files: ScenarioFiles) -> None:
    files.error({"cluster": {"gpu": 80}}, "cluster.gpu", "a catalog GPU id (e.g. h100-sxm)")


def test_missing_stage_lists_the_stages(files: ScenarioFiles) -> None:
    message = files.error(
        {"workload": {"stage": None}},
        "workload",
        "workload.stage: required and missing: add it, one of pretrain | sft | dpo | grpo | ppo "
        "| inference | moe_layer",
    )
    assert "discriminator" not in message


# -- numbers: ranges with their fix, and no booleans --------------------------------------------
@pytest.mark.parametrize(
    ("update", "field", "fix"),
    [
        ({"cluster": {"nodes": 0}}, "cluster.nodes", "set it to a positive integer"),
        ({"cluster": {"gpus_per_node": -8}}, "cluster.gpus_per_node", "a positive integer"),
        ({"workload": {"total_tokens": 0}}, "workload.total_tokens", "a positive number"),
        ({"cost": {"usd_per_gpu_hour": -1.0}}, "cost.usd_per_gpu_hour", "0 or a positive number"),
        ({"routing": {"skew": -1}}, "routing.skew", "0 or a positive number"),
        (
            {"workload": {"stage": "sft", "packing_efficiency": 0}},
            "workload.packing_efficiency",
            "set it to a number in (0, 1]",
        ),
        (
            {"workload": {"stage": "sft", "prompt_fraction": 1}},
            "workload.prompt_fraction",
            "set it to a number in [0, 1)",
        ),
        (
            {"cluster": {"inter_node": {"spine_oversubscription": 0.5}}},
            "cluster.inter_node.spine_oversubscription",
            "set it to a number of at least 1.0",
        ),
    ],
)
def test_out_of_range_value_says_the_fix(
    files: ScenarioFiles, update: dict, field: str, fix: str
) -> None:
    files.error(update, field, "Input should be", fix)


@pytest.mark.parametrize(
    ("update", "field", "kind"),
    [
        ({"parallel": {"tp": True}}, "parallel.tp", "an integer"),
        ({"parallel": {"zero_stage": True}}, "parallel.zero_stage", "an integer"),
        ({"cluster": {"nodes": False}}, "cluster.nodes", "an integer"),
        ({"workload": {"global_batch": True}}, "workload.global_batch", "an integer"),
        ({"routing": {"seed": True}}, "routing.seed", "an integer"),
        ({"cost": {"usd_per_gpu_hour": True}}, "cost.usd_per_gpu_hour", "a number"),
    ],
)
def test_boolean_where_a_number_goes_is_refused(
    files: ScenarioFiles, update: dict, field: str, kind: str
) -> None:
    files.error(update, field, f"expected {kind}, got a boolean")


def test_boolean_in_a_list_of_numbers_is_refused(files: ScenarioFiles) -> None:
    path = files.write({**BASE, "routing": {"distribution": "histogram", "histogram": [1, True]}})
    with pytest.raises(ScenarioError, match=r"routing\.histogram\.1: expected a number, got a b"):
        load_scenario(path)


def test_boolean_fields_still_take_booleans(files: ScenarioFiles) -> None:
    s = files.load({"parallel": {"sequence_parallel": False}, "simulation": {"overlap_dp": False}})
    assert s.parallel.sequence_parallel is False and s.simulation.overlap_dp is False


def _spec_classes(cls: type[BaseModel], seen: set[type]) -> set[type]:
    """Every spec class a scenario file can reach from ``cls``."""
    if cls in seen:
        return seen
    seen.add(cls)
    for f in cls.model_fields.values():
        for inner in _types_in(f.annotation):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                _spec_classes(inner, seen)
    return seen


def _types_in(annotation: Any) -> list[Any]:
    if get_origin(annotation) is Literal:
        return [annotation]
    args = get_args(annotation)
    return [annotation, *(t for a in args for t in _types_in(a))]


def _is_numeric(annotation: Any) -> bool:
    for t in _types_in(annotation):
        if t in (int, float):
            return True
        if get_origin(t) is Literal and all(
            isinstance(v, int) and not isinstance(v, bool) for v in get_args(t)
        ):
            return True
    return False


def test_every_numeric_field_of_a_scenario_refuses_booleans() -> None:
    """Not just the fields tried above: each int/float field reachable from a Scenario uses a
    base type that refuses booleans (a new field with a plain ``int`` fails here)."""
    plain = []
    for cls in _spec_classes(Scenario, set()):
        for name, f in cls.model_fields.items():
            if not _is_numeric(f.annotation):
                continue
            validators = [m for m in f.metadata if m in (NO_BOOL_INT, NO_BOOL_FLOAT)]
            inner = [
                m
                for t in _types_in(f.annotation)
                for m in getattr(t, "__metadata__", ())
                if m in (NO_BOOL_INT, NO_BOOL_FLOAT)
            ]
            if not (validators or inner):
                plain.append(f"{cls.__name__}.{name}")
    assert plain == []


@pytest.mark.parametrize(
    ("section", "key", "text"),
    [
        ("cost", "usd_per_gpu_hour", ".inf"),
        ("cost", "usd_per_gpu_hour", ".nan"),
        ("workload", "total_tokens", ".inf"),
    ],
)
def test_infinite_or_nan_numbers_are_refused(
    files: ScenarioFiles, section: str, key: str, text: str
) -> None:
    """`.inf` was accepted and `--json` then printed Infinity, which is not JSON."""
    data = {**BASE, section: {**BASE.get(section, {}), key: "PLACEHOLDER"}}
    path = files.write(data)
    path.write_text(path.read_text().replace("PLACEHOLDER", text))
    with pytest.raises(ScenarioError, match=rf"{section}\.{key}: .*finite"):
        load_scenario(path)


def test_a_negative_routing_seed_is_refused_at_validation(files: ScenarioFiles) -> None:
    """`routing.seed: -1` passed validation and failed inside the simulator."""
    path = files.write({**BASE, "routing": {"distribution": "uniform", "seed": -1}})
    with pytest.raises(ScenarioError, match=r"routing\.seed"):
        load_scenario(path)
