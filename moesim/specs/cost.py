"""Cost: turns GPU-hours into dollars."""

from __future__ import annotations

from pydantic import Field

from moesim.specs.base import Float, Spec


class Cost(Spec):
    usd_per_gpu_hour: Float = Field(2.0, ge=0, description="rental or amortised price per GPU-hour")
