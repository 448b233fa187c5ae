"""Reading scenario and model files: YAML with line numbers, catalog ids resolved, errors that
name the file, the line, the field and the fix.

A scenario file may name catalog ids (or model/GPU YAML files) where specs go
(``model: mixtral-8x7b``, ``cluster.gpu: h100-sxm``, ``workload.reward_model: llama-3-8b``);
they are replaced by the catalog's data before pydantic validates, so a Scenario always holds
complete specs. ``ID_FIELDS`` lists those fields; ``moesim.scenario_schema.file_schema``
describes the file as written (ids or inline specs), from the same list. Pydantic's errors
become messages for people in ``moesim.validation_messages``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from moesim import yaml_io
from moesim.catalog import CatalogError, raw_entry
from moesim.specs import ModelSpec, Scenario
from moesim.validation_messages import format_validation_error, nearest_line
from moesim.yaml_io import YAMLFileError

#: the top-level key of a published case (a scenario plus what a source measured)
EXPECT_KEY = "expect"


class ScenarioError(ValueError):
    """A scenario or model file that cannot be read or validated; the message is for people."""


# -- YAML with the line of every key (moesim.yaml_io) ---------------------------------------
def read_text(path: str | Path) -> str:
    """A file's text as UTF-8; a missing, unreadable or binary file is a ScenarioError."""
    try:
        return yaml_io.read_text(path)
    except YAMLFileError as e:
        raise ScenarioError(str(e)) from None


def load_yaml(path: str | Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    """The file's data and a map from key path to line number."""
    try:
        return yaml_io.load_yaml_mapping(path)
    except YAMLFileError as e:
        raise ScenarioError(str(e)) from None


# -- catalog ids -> specs --------------------------------------------------------------------
#: Fields that take a catalog id, a YAML path or an inline spec: key path -> catalog kind.
ID_FIELDS: dict[tuple[str, ...], Literal["models", "gpus"]] = {
    ("model",): "models",
    ("cluster", "gpu"): "gpus",
    ("workload", "reward_model"): "models",
    ("workload", "critic_model"): "models",
    ("workload", "speculative", "draft_model"): "models",
}
_OPTIONAL_ID_FIELDS = {
    ("workload", "reward_model"),
    ("workload", "critic_model"),
    ("workload", "speculative", "draft_model"),
}
KIND_WORDS = {"models": ("model", "mixtral-8x7b"), "gpus": ("GPU", "h100-sxm")}


def _at(source: str, lines: dict[tuple, int] | None, loc: tuple) -> str:
    """``file:line: field:`` for an error about ``loc`` (what is known of it)."""
    line = nearest_line(loc, lines or {})
    where = f"{source}:{line}" if source and line else source
    field = ".".join(str(x) for x in loc)
    return f"{where}: {field}" if where else field


def _resolve(
    kind: Literal["models", "gpus"],
    value: Any,
    loc: tuple,
    base: Path | None,
    source: str = "",
    lines: dict[tuple, int] | None = None,
) -> Any:
    """The spec dict an id, a YAML path or an inline spec stands for."""
    word, example = KIND_WORDS[kind]
    if isinstance(value, dict) or (value is None and loc in _OPTIONAL_ID_FIELDS):
        return value
    if not isinstance(value, str):
        got = "nothing (null)" if value is None else f"{type(value).__name__} {value!r}"
        raise ScenarioError(
            f"{_at(source, lines, loc)}: expected a catalog {word} id (e.g. {example}), the "
            f"path of a {word} YAML file, or an inline {word} spec (a mapping of its fields); "
            f"got {got}"
        )
    if Path(value).suffix in (".yaml", ".yml"):
        candidates = [Path(value)]
        if base is not None and not Path(value).is_absolute():
            candidates.insert(0, base / value)
        for path in candidates:
            if path.is_file():
                try:
                    return load_yaml(path)[0]
                except ScenarioError as e:
                    raise ScenarioError(f"{_at(source, lines, loc)}: {e}") from None
        raise ScenarioError(
            f"{_at(source, lines, loc)}: no such {word} file '{value}'"
            + (f" (looked in {base} and the current directory)" if base is not None else "")
        )
    try:
        return raw_entry(kind, value)
    except CatalogError as e:
        raise ScenarioError(f"{_at(source, lines, loc)}: {e}") from None


def resolve_ids(
    data: dict[str, Any],
    base: Path | None = None,
    source: str = "",
    lines: dict[tuple, int] | None = None,
) -> dict[str, Any]:
    """A copy of a scenario dict with catalog ids (or YAML paths) replaced by their specs."""
    d = copy.deepcopy(data)
    for loc, kind in ID_FIELDS.items():
        parent = d
        for key in loc[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and loc[-1] in parent:
            parent[loc[-1]] = _resolve(kind, parent[loc[-1]], loc, base, source, lines)
    return d


def set_dotted(d: dict[str, Any], key: str, value: Any, label: str = "grid key") -> None:
    """``set_dotted(d, "parallel.ep", 8)`` sets d["parallel"]["ep"] (creating dicts on the way).

    A catalog id at a parent key (``cluster.gpu: h100-sxm``) cannot take sub-keys: set the id.
    """
    parts = key.split(".")
    node = d
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ScenarioError(f"{label} {key}: '{part}' is {child!r}, not a mapping")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``--set key=value`` arguments as (dotted key, value); the value is read as YAML, so it
    is typed as the file would be (``16``, ``0.5``, ``fp8``, ``{distribution: zipf}``, ``null``
    to unset an optional field such as ``workload.speculative``) and the schema then checks it
    like any other field."""
    out: list[tuple[str, Any]] = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ScenarioError(
                f"--set {item!r}: write key=value with a dotted key, e.g. --set parallel.ep=16"
            )
        try:
            value = yaml.load(text, Loader=yaml_io.YAMLLoader) if text.strip() else None
        except yaml.YAMLError:
            raise ScenarioError(f"--set {key}: {text!r} is not a value YAML can read") from None
        if not text.strip():
            raise ScenarioError(f"--set {key}: give a value after '=', e.g. --set {key}=8")
        out.append((key, value))  # an explicit null unsets an optional field
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[tuple[str, Any]]) -> None:
    """Set each (dotted key, value) in a file's mapping, in order (``--set``)."""
    for key, value in overrides:
        set_dotted(data, key, value, label="--set")


# -- public loaders -----------------------------------------------------------------------------
def scenario_from_dict(
    data: dict[str, Any], source: str = "", lines: dict | None = None, base: Path | None = None
) -> Scenario:
    resolved = resolve_ids(data, base, source, lines)
    try:
        # base_dir: a relative file inside a spec (an empirical length file) is the scenario's
        return Scenario.model_validate(resolved, context={"base_dir": base})
    except ValidationError as e:
        raise ScenarioError(format_validation_error(e, source, lines)) from None


def load_scenario(path: str | Path, overrides: Sequence[tuple[str, Any]] = ()) -> Scenario:
    """A Scenario from a YAML file, with file:line in every error; ``overrides`` (``--set``,
    from ``parse_overrides``) replace fields first.

    A published case's ``expect`` block is set aside: it describes the source's measurement,
    not the run (``moesim.reproduce.cases`` validates it)."""
    data, lines = load_yaml(path)
    data = {k: v for k, v in data.items() if k != EXPECT_KEY}
    apply_overrides(data, overrides)
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
