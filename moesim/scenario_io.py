"""Reading scenario and model files: YAML with line numbers, catalog ids resolved, errors that
name the file, the line, the field and the fix.

A scenario file may name catalog ids where specs go (``model: mixtral-8x7b``,
``cluster.gpu: h100-sxm``, ``workload.reward_model: llama-3-8b``); they are replaced by the
catalog's data before pydantic validates, so a Scenario always holds complete specs.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from moesim.catalog import CatalogError, raw_entry
from moesim.specs import ModelSpec, Scenario


class ScenarioError(ValueError):
    """A scenario or model file that cannot be read or validated; the message is for people."""


# -- YAML with the line of every key ---------------------------------------------------------
class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that records the line of each mapping key by its dotted path."""


def _compose_lines(node: yaml.Node, path: tuple, out: dict[tuple, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[(*path, key)] = key_node.start_mark.line + 1
            _compose_lines(value_node, (*path, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = item.start_mark.line + 1
            _compose_lines(item, (*path, i), out)


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    """The file's data and a map from key path to line number."""
    p = Path(path)
    if not p.is_file():
        raise ScenarioError(f"{p}: no such file")
    text = p.read_text()
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ScenarioError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ScenarioError(
            f"{p}: expected a mapping of keys at the top, got {type(data).__name__}"
        )
    lines: dict[tuple, int] = {}
    if node is not None:
        _compose_lines(node, (), lines)
    return data, lines


# -- catalog ids -> specs --------------------------------------------------------------------
def _resolve(kind: str, value: Any, where: str, base: Path | None) -> Any:
    if not isinstance(value, str):
        return value
    candidate = Path(value)
    if base is not None and not candidate.is_absolute() and (base / candidate).is_file():
        value = str(base / candidate)
    try:
        return raw_entry(kind, value)
    except CatalogError as e:
        raise ScenarioError(f"{where}: {e}") from None


def resolve_ids(data: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """A copy of a scenario dict with catalog ids (or YAML paths) replaced by their specs."""
    d = copy.deepcopy(data)
    if "model" in d:
        d["model"] = _resolve("models", d["model"], "model", base)
    cluster = d.get("cluster")
    if isinstance(cluster, dict) and "gpu" in cluster:
        cluster["gpu"] = _resolve("gpus", cluster["gpu"], "cluster.gpu", base)
    workload = d.get("workload")
    if isinstance(workload, dict):
        for key in ("reward_model", "critic_model"):
            if key in workload:
                workload[key] = _resolve("models", workload[key], f"workload.{key}", base)
    return d


# -- pydantic errors -> messages --------------------------------------------------------------
def format_validation_error(
    e: ValidationError, source: str = "", lines: dict[tuple, int] | None = None
) -> str:
    """One line per problem: ``file:line: field: message``."""
    out = []
    for err in e.errors():
        loc = tuple(x for x in err["loc"] if not _is_union_tag(x))
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:
            loc, msg = _loc_from_message(msg)
        field = ".".join(str(x) for x in loc) or "(top level)"
        line = _nearest_line(loc, lines or {})
        where = f"{source}:{line}" if source and line else source
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}': remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "required and missing: add it"
        out.append(f"{where + ': ' if where else ''}{field}: {msg}")
    return "\n".join(out)


_STAGE_TAGS = {"pretrain", "sft", "dpo", "grpo", "ppo", "inference", "moe_layer"}


def _is_union_tag(x: Any) -> bool:
    return isinstance(x, str) and x in _STAGE_TAGS


_FIELD_AT_START = re.compile(r"^([a-z_]+(?:\.[a-z_]+)*)(: )?")


def _loc_from_message(msg: str) -> tuple[tuple, str]:
    """The field a cross-field check names first (``parallel.tp (3) must divide ...``).

    Scenario-level validators see the whole scenario, so pydantic gives their errors no
    location; their messages start with the field at fault, which gives the line to point at.
    """
    m = _FIELD_AT_START.match(msg)
    if m is None or m.group(1).split(".")[0] not in Scenario.model_fields:
        return (), msg
    loc = tuple(m.group(1).split("."))
    return loc, msg[m.end() :] if m.group(2) else msg


def _nearest_line(loc: tuple, lines: dict[tuple, int]) -> int | None:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


# -- public loaders -----------------------------------------------------------------------------
def scenario_from_dict(
    data: dict[str, Any], source: str = "", lines: dict | None = None, base: Path | None = None
) -> Scenario:
    resolved = resolve_ids(data, base)
    try:
        return Scenario.model_validate(resolved)
    except ValidationError as e:
        raise ScenarioError(format_validation_error(e, source, lines)) from None


def load_scenario(path: str | Path) -> Scenario:
    """A Scenario from a YAML file, with file:line in every error."""
    data, lines = load_yaml(path)
    return scenario_from_dict(data, str(path), lines, base=Path(path).parent)


def load_model_arg(name: str) -> ModelSpec:
    """A model from a catalog id or a model YAML file (the MODEL argument of the CLI)."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        data, lines = load_yaml(p)
        try:
            return ModelSpec.model_validate(data)
        except ValidationError as e:
            raise ScenarioError(format_validation_error(e, str(p), lines)) from None
    try:
        return ModelSpec.model_validate(raw_entry("models", name))
    except CatalogError as e:
        raise ScenarioError(str(e)) from None


def file_kind(data: dict[str, Any]) -> str:
    """Which kind of moesim file a YAML mapping is: scenario, comparison, sweep or plan."""
    if "scenarios" in data:
        return "comparison"
    if "grid" in data or "zip" in data:
        return "sweep"
    if "search" in data or "constraints" in data:
        return "plan"
    return "scenario"
