"""The ``files`` fixture: scenario files under a temp dir (see scenario_files.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scenario_files import ScenarioFiles


@pytest.fixture
def files(tmp_path: Path) -> ScenarioFiles:
    return ScenarioFiles(tmp_path)
