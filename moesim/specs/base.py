"""The base every spec shares: frozen, unknown keys refused, and size helpers.

Specs are what users write by hand in scenario files, so a typo must be an error
(``extra="forbid"``), and a spec, once built, must not change under the simulator's feet
(``frozen=True``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]


class Spec(BaseModel):
    """A frozen pydantic model that refuses unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class SpecError(ValueError):
    """A spec that cannot be built: ``field`` names the key, the message says the fix.

    Raised from validators (pydantic wraps it into a ValidationError whose location is the
    model) and by the loaders for problems that span files (an unknown catalog id).
    """

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")
