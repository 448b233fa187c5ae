"""Pydantic's validation errors turned into messages for people: the file, the line of the
offending key, the field's dotted path, what was wrong and the fix (the bound to respect, the
stage tags a workload may have, the closest allowed value).
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from moesim.specs import Scenario


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
        line = nearest_line(loc, lines or {})
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


def nearest_line(loc: tuple, lines: dict[tuple, int]) -> int | None:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None
