"""Reading scenario and model files: YAML with line numbers, catalog ids resolved, errors that
name the file, the line, the field and the fix.

A scenario file may name catalog ids (or model/GPU YAML files) where specs go
(``model: mixtral-8x7b``, ``cluster.gpu: h100-sxm``, ``workload.reward_model: llama-3-8b``);
they are replaced by the catalog's data before pydantic validates, so a Scenario always holds
complete specs. ``ID_FIELDS`` lists those fields; ``file_schema`` describes the file as written
(ids or inline specs), from the same list.
"""

from __future__ import annotations

import copy
import re
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from moesim import yaml_io
from moesim.catalog import CatalogError, gpu_ids, model_ids, raw_entry
from moesim.specs import ModelSpec, Scenario
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
_KIND_WORDS = {"models": ("model", "mixtral-8x7b"), "gpus": ("GPU", "h100-sxm")}


def _at(source: str, lines: dict[tuple, int] | None, loc: tuple) -> str:
    """``file:line: field:`` for an error about ``loc`` (what is known of it)."""
    line = _nearest_line(loc, lines or {})
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
    word, example = _KIND_WORDS[kind]
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


# -- pydantic errors -> messages --------------------------------------------------------------
def format_validation_error(
    e: ValidationError,
    source: str = "",
    lines: dict[tuple, int] | None = None,
    prefix: tuple = (),
    root: type[BaseModel] | None = None,
) -> str:
    """One line per problem: ``file:line: field: message``, with the fix where one is known.
    ``root`` is the model validated (default Scenario) and ``prefix`` where it sits in the file
    (a plan's ``("search",)``), so fields and lines are the file's."""
    out = []
    for err in e.errors():
        loc = prefix + tuple(x for x in err["loc"] if not _is_union_tag(x))
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:
            loc, msg = _loc_from_message(msg)
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}': remove it or check its spelling"
        elif kind == "missing":
            msg = "required and missing: add it"
        elif kind == "union_tag_not_found":
            loc = (*loc, "stage")
            msg = f"required and missing: add it, one of {_stages()}"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = (
                "expected a mapping of its fields (key: value), got "
                f"{type(err['input']).__name__} {err['input']!r}"
            )
        elif kind in _BOUND_ERRORS:
            fix = _bound_fix(err["loc"], root or Scenario)
            msg = f"{msg}: {fix}" if fix else msg
        field = ".".join(str(x) for x in loc) or "(top level)"
        line = _nearest_line(loc, lines or {})
        where = f"{source}:{line}" if source and line else source
        out.append(f"{where + ': ' if where else ''}{field}: {msg}")
    return "\n".join(out)


_STAGE_TAGS = ("pretrain", "sft", "dpo", "grpo", "ppo", "inference", "moe_layer")
_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _stages() -> str:
    return " | ".join(_STAGE_TAGS)


def _is_union_tag(x: Any) -> bool:
    return isinstance(x, str) and x in _STAGE_TAGS


def _field_at(loc: tuple, root: type[BaseModel] = Scenario) -> Any:
    """The pydantic FieldInfo at a raw error location (union tags select the stage's class)."""
    cls: Any = root
    info = None
    for part in loc:
        if isinstance(part, int):
            continue
        cls = _model_of(cls, part)
        if cls is None:
            return None
        if isinstance(part, str) and part in _STAGE_TAGS and part not in cls.model_fields:
            continue
        info = cls.model_fields.get(part)
        if info is None:
            return None
        cls = info.annotation
    return info


def _model_of(annotation: Any, tag: Any) -> type[BaseModel] | None:
    """The spec class an annotation holds (``X | None``; the member of a union whose stage is
    ``tag``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        models = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
        for m in models:
            stage = m.model_fields.get("stage")
            if stage is not None and stage.default == tag:
                return m
        return models[0] if len(models) == 1 else None
    return None


def _unwrapped(annotation: Any) -> tuple[list[Any], list[Any]]:
    """The types an annotation allows (None aside) and the metadata of their ``Annotated``
    (the bounds of ``PositiveInt | None`` sit inside the union, not on the field)."""
    members = [annotation]
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
    kinds, metadata = [], []
    for a in members:
        if get_origin(a) is Annotated:
            a, *extra = get_args(a)
            metadata += extra
        kinds.append(a)
    return kinds, metadata


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _bound_fix(loc: tuple, root: type[BaseModel] = Scenario) -> str:
    """'set it to a positive integer' and the like, from the field's declared bounds."""
    info = _field_at(loc, root)
    if info is None:
        return ""
    kinds, metadata = _unwrapped(info.annotation)
    word = "integer" if all(k is int for k in kinds) else "number"
    bounds: dict[str, Any] = {}
    flat = []
    for m in [*info.metadata, *metadata]:
        # Field(gt=0) inside an Annotated keeps its bounds in a FieldInfo of its own
        flat += m.metadata if isinstance(m, FieldInfo) else [m]
    for m in flat:
        for name in ("gt", "ge", "lt", "le"):
            if getattr(m, name, None) is not None:
                bounds[name] = getattr(m, name)
    low = next(((k, bounds[k]) for k in ("gt", "ge") if k in bounds), None)
    high = next(((k, bounds[k]) for k in ("lt", "le") if k in bounds), None)
    if low and high:
        left, right = ("(" if low[0] == "gt" else "["), (")" if high[0] == "lt" else "]")
        fix = f"set it to {_a(word)} in {left}{low[1]:,}, {high[1]:,}{right}"
        # an input limit's reason lives in its description ("at most 1,024: ...")
        return fix + (f" ({info.description})" if "at most" in (info.description or "") else "")
    if low == ("gt", 0):
        return f"set it to a positive {word}"
    if low == ("ge", 0):
        return f"set it to 0 or a positive {word}"
    if low:
        return f"set it to {_a(word)} {'above' if low[0] == 'gt' else 'of at least'} {low[1]}"
    if high:
        return f"set it to {_a(word)} {'below' if high[0] == 'lt' else 'of at most'} {high[1]}"
    return ""


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
    is typed as the file would be (``16``, ``0.5``, ``fp8``, ``{distribution: zipf}``) and the
    schema then checks it like any other field."""
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
        if value is None:
            raise ScenarioError(f"--set {key}: give a value after '=', e.g. --set {key}=8")
        out.append((key, value))
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


# -- the JSON Schema of the file as written ----------------------------------------------------
_SPEC_DEFS = {"models": "ModelSpec", "gpus": "GPUSpec"}


def file_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a scenario file as users write it.

    ``Scenario.model_json_schema()`` describes the resolved Scenario, where ``model`` is a
    ModelSpec; a file names a catalog id there (or a YAML path) as often as it holds the spec
    inline, so every field of ``ID_FIELDS`` takes either. ``stage`` picks the workload's class
    and is required (pydantic's default for it never applies: the discriminator must be given).
    Cross-field rules (tp divides the heads, gpus = tp·cp·pp·dp) are beyond a schema:
    ``moesim validate`` checks them.
    """
    schema = Scenario.model_json_schema()
    defs = schema["$defs"]
    ids = {"models": model_ids(), "gpus": gpu_ids()}
    for kind, words in _KIND_WORDS.items():
        defs[f"{_SPEC_DEFS[kind][:-4]}Id"] = {
            "type": "string",
            "description": (
                f"a catalog {words[0]} id (e.g. {words[1]}) or the path of a {words[0]} YAML "
                "file, relative to the scenario file"
            ),
            "anyOf": [{"enum": ids[kind]}, {"pattern": r"\.ya?ml$"}],
        }
    for loc, kind in ID_FIELDS.items():
        spec_ref = f"#/$defs/{_SPEC_DEFS[kind]}"
        id_ref = f"#/$defs/{_SPEC_DEFS[kind][:-4]}Id"
        found = _patch_property(schema, defs, loc, spec_ref, id_ref)
        assert found, f"ID_FIELDS names {'.'.join(loc)}, which the Scenario schema lacks"
    workload = schema["properties"]["workload"]
    for ref in workload.get("discriminator", {}).get("mapping", {}).values():
        variant = defs[ref.removeprefix("#/$defs/")]
        variant["required"] = sorted({*variant.get("required", []), "stage"})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _patch_property(
    node: dict[str, Any], defs: dict[str, Any], loc: tuple, spec_ref: str, id_ref: str
) -> bool:
    """Make the property at ``loc`` (through $refs and unions) take an id where it took a spec."""
    if "$ref" in node:
        return _patch_property(defs[node["$ref"].split("/")[-1]], defs, loc, spec_ref, id_ref)
    for union in ("oneOf", "anyOf"):
        if union in node:
            hits = [_patch_property(m, defs, loc, spec_ref, id_ref) for m in node[union]]
            return any(hits)
    props = node.get("properties", {})
    if loc[0] not in props:
        return False
    if len(loc) > 1:
        return _patch_property(props[loc[0]], defs, loc[1:], spec_ref, id_ref)
    props[loc[0]] = _with_id(props[loc[0]], spec_ref, id_ref)
    return True


def _with_id(prop: dict[str, Any], spec_ref: str, id_ref: str) -> dict[str, Any]:
    """``prop`` with every reference to the spec replaced by 'an id or the spec'."""
    either = {"anyOf": [{"$ref": id_ref}, {"$ref": spec_ref}]}
    if prop.get("$ref") == spec_ref:
        rest = {k: v for k, v in prop.items() if k != "$ref"}
        return {**rest, **either}
    for union in ("anyOf", "oneOf"):
        if union in prop:
            members = []
            for m in prop[union]:
                members += either["anyOf"] if m.get("$ref") == spec_ref else [m]
            return {**prop, union: members}
    return prop
