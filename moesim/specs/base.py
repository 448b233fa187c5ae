"""The base every spec shares: frozen, unknown keys refused, no booleans for numbers, and size
helpers.

Specs are what users write by hand in scenario files, so a typo must be an error
(``extra="forbid"``), and a spec, once built, must not change under the simulator's feet
(``frozen=True``). YAML reads ``true``/``yes`` as booleans and pydantic's lax mode takes
``tp: true`` as 1, silently; a boolean where a number goes is always a mistake, so every
numeric field of a spec uses the types below, which refuse it. (Pydantic's strict mode would
refuse it too, but also ``nodes: 2.0`` and numbers written as strings, which are fine.)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _refuse_bool(kind: str):
    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(
                f"expected {kind}, got a boolean ({str(value).lower()}): write {kind} "
                "(true/false are only for on/off keys)"
            )
        return value

    check.__name__ = f"refuse_bool_for_{kind.split()[-1]}"
    return check


NO_BOOL_INT = BeforeValidator(_refuse_bool("an integer"))
NO_BOOL_FLOAT = BeforeValidator(_refuse_bool("a number"))

Int = Annotated[int, NO_BOOL_INT]
Float = Annotated[float, NO_BOOL_FLOAT]
# the bounds before the validator: so pydantic applies them to the number schema, and the JSON
# Schema says exclusiveMinimum (after a validator it would leak pydantic's own "gt")
PositiveInt = Annotated[int, Field(gt=0), NO_BOOL_INT]
NonNegativeInt = Annotated[int, Field(ge=0), NO_BOOL_INT]
PositiveFloat = Annotated[float, Field(gt=0), NO_BOOL_FLOAT]
NonNegativeFloat = Annotated[float, Field(ge=0), NO_BOOL_FLOAT]
Fraction = Annotated[float, Field(gt=0, le=1), NO_BOOL_FLOAT]
ZeroStage = Annotated[Literal[0, 1, 2, 3], NO_BOOL_INT]


class Spec(BaseModel):
    """A frozen pydantic model that refuses unknown keys."""

    # no inf or nan anywhere: `usd_per_gpu_hour: .inf` is refused, not printed as Infinity
    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False
    )


class SpecError(ValueError):
    """A spec that cannot be built: ``field`` names the key, the message says the fix.

    Raised from validators (pydantic wraps it into a ValidationError whose location is the
    model) and by the loaders for problems that span files (an unknown catalog id).
    """

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")
