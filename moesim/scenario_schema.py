"""The JSON Schema (draft 2020-12) of a scenario file as users write it: where the resolved
Scenario holds specs, the file may hold catalog ids or spec files instead
(``moesim.scenario_io.ID_FIELDS``); ``moesim schema`` writes it.
"""

from __future__ import annotations

from typing import Any

from moesim.catalog import gpu_ids, model_ids
from moesim.scenario_io import ID_FIELDS, KIND_WORDS
from moesim.specs import Scenario

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
    for kind, words in KIND_WORDS.items():
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
