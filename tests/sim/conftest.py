"""Fixtures of the simulator tests (scenarios come from sim_scenarios.py)."""

from __future__ import annotations

import pytest
from sim_scenarios import build

from moesim.specs import Scenario


@pytest.fixture
def small_moe() -> Scenario:
    return build()
