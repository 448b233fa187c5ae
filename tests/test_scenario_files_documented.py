"""Every shipped scenario file opens with comments that say what it answers and how to run it."""

from __future__ import annotations

from pathlib import Path

import pytest

SCENARIOS = Path(__file__).parents[1] / "scenarios"
FILES = sorted(SCENARIOS.rglob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(SCENARIOS)) for p in FILES])
def test_scenario_file_opens_with_its_question_and_how_to_run_it(path: Path) -> None:
    lines = path.read_text().splitlines()
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    text = " ".join(header)
    assert len(header) >= 2, f"{path}: start with comments saying what it answers"
    assert "Run:" in text and "moesim " in text, f"{path}: say how to run it ('# Run: moesim ...')"
