"""Routing: how tokens spread over experts in the simulator (a distribution, seeded)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from moesim.specs.base import Float, NonNegativeInt, Spec


class Routing(Spec):
    """``uniform`` multinomial, ``zipf`` with exponent ``skew``, or a measured ``histogram``.

    ``histogram`` holds tokens (or fractions) per expert; ``histogram_file`` names a JSON/CSV file
    written by ``moesim.nn`` (relative to the scenario file).
    """

    distribution: Literal["uniform", "zipf", "histogram"] = "uniform"
    skew: Float = Field(1.0, ge=0, description="zipf exponent s: expert i gets ∝ 1/(i+1)^s")
    histogram: list[Float] | None = None
    histogram_file: str | None = None
    seed: NonNegativeInt = 0

    @model_validator(mode="after")
    def _check(self) -> Routing:
        if self.distribution == "histogram":
            if self.histogram is None and self.histogram_file is None:
                raise ValueError(
                    "routing.distribution is 'histogram': give routing.histogram or "
                    "routing.histogram_file"
                )
            if self.histogram is not None and (
                any(x < 0 for x in self.histogram) or sum(self.histogram) <= 0
            ):
                raise ValueError("routing.histogram needs non-negative counts with a positive sum")
        return self
