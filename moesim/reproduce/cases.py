"""A published case: a scenario file plus ``expect`` (what a paper or vendor measured).

The ``expect`` block is validated here, with ``file:line: expect.field: message`` errors like
every other moesim file; the rest of the file is an ordinary scenario (moesim.scenario_io).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from moesim.scenario_io import EXPECT_KEY, ScenarioError, load_yaml, scenario_from_dict
from moesim.specs import Scenario

CaseClass = Literal[
    "moe_training", "dense_training", "communication", "serving", "memory", "post_training"
]
CLASSES: tuple[str, ...] = CaseClass.__args__  # type: ignore[attr-defined]


class Expect(BaseModel):
    """What the source measured, and how close moesim must come to count as 'within'."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    class_: CaseClass = Field(
        alias="class", description="which kind of run this validates (the summary's groups)"
    )
    metric: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$",
        description="a dotted path into `moesim simulate --json` output, e.g. step_time_s or "
        "memory_per_gpu_GB.total",
    )
    value: float = Field(gt=0, description="the published figure, in the metric's unit")
    tolerance: float = Field(
        gt=0, description="relative: |predicted/value - 1| <= tolerance counts as within"
    )
    source: str = Field(
        min_length=1, description="paper/page/table/row (and URL) the value comes from"
    )
    assumptions: list[str] = Field(
        default_factory=list,
        description="details the source does not publish, chosen before looking at the result",
    )
    unsupported: str | None = Field(
        default=None,
        description="why moesim cannot yet express this case as run (reported, not simulated)",
    )

    @field_validator("value", "tolerance", mode="before")
    @classmethod
    def _a_number(cls, v: Any) -> Any:
        """A quoted '39.5' is a transcription slip, not a number: refuse it, bools too."""
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"expected a number, got {type(v).__name__} {v!r}")
        return v

    @field_validator("source")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name the paper/page/table/row the value comes from")
        return v

    @property
    def case_class(self) -> str:
        return self.class_


@dataclass(frozen=True)
class Case:
    """One published case, ready to simulate (``scenario`` is None when it failed to load)."""

    id: str
    path: Path
    expect: Expect
    scenario: Scenario | None
    load_error: str | None = None


def split_case(data: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The scenario part of a case file and its raw ``expect`` block."""
    rest = {k: v for k, v in data.items() if k != EXPECT_KEY}
    return rest, data.get(EXPECT_KEY)


def parse_expect(raw: Any, source: str = "", lines: dict[tuple, int] | None = None) -> Expect:
    """The ``expect`` block, or a ScenarioError naming ``file:line: expect.field: message``."""
    if not isinstance(raw, dict):
        raise ScenarioError(
            f"{_where(source, lines, ())}expect: expected a mapping with class, metric, value, "
            f"tolerance, source (see scenarios/published/README.md), got {raw!r}"
        )
    try:
        return Expect.model_validate(raw)
    except ValidationError as e:
        raise ScenarioError(
            "\n".join(_expect_message(err, source, lines) for err in e.errors())
        ) from None


def _where(source: str, lines: dict[tuple, int] | None, loc: tuple) -> str:
    """``file:line: `` of the nearest key to ``expect.<loc>`` that the file has."""
    lines = lines or {}
    full = (EXPECT_KEY, *loc)
    line = next((lines[full[:n]] for n in range(len(full), 0, -1) if full[:n] in lines), None)
    where = f"{source}:{line}" if source and line else source
    return f"{where}: " if where else ""


_FIXES = {
    "missing": "required and missing: add it",
    "literal_error": f"must be one of {' | '.join(CLASSES)}",
    "greater_than": "must be a positive number",
}


def _expect_message(err: Any, source: str, lines: dict[tuple, int] | None) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = f"unknown key '{loc[-1]}': remove it or check its spelling"
    elif kind in _FIXES:
        msg = _FIXES[kind] + ("" if kind == "missing" else f", got {err.get('input')!r}")
    else:
        msg = err["msg"].removeprefix("Value error, ")
    field = ".".join(str(x) for x in (EXPECT_KEY, *loc))
    return f"{_where(source, lines, loc)}{field}: {msg}"


def load_case(path: str | Path, strict: bool = True) -> Case:
    """A published case from its file: the scenario and its validated ``expect`` block.

    A broken ``expect`` block (or YAML) always raises ScenarioError: the case cannot be
    reported. A scenario that does not validate raises too when ``strict`` (``moesim
    validate``); otherwise (``moesim reproduce``) the case is kept with the error as
    ``load_error``, so one bad case never hides the others.
    """
    path = Path(path)
    data, lines = load_yaml(path)
    scenario_data, raw_expect = split_case(data)
    if raw_expect is None:
        raise ScenarioError(
            f"{path}: expect: required and missing: a published case needs an 'expect' block "
            "(class, metric, value, tolerance, source; see scenarios/published/README.md)"
        )
    expect = parse_expect(raw_expect, str(path), lines)
    try:
        scenario = scenario_from_dict(scenario_data, str(path), lines, base=path.parent)
    except ScenarioError as e:
        if strict and expect.unsupported is None:
            raise
        return Case(path.stem, path, expect, None, str(e))
    return Case(path.stem, path, expect, scenario)


def find_case_files(root: str | Path) -> list[Path]:
    """Every YAML under ``root`` (recursive), sorted by path: each must be a published case."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
