"""Helpers for the spec-rule tests: build scenario files, load them, and check the errors.

Every rule is checked through a real YAML file and ``moesim.scenario_io.load_scenario``, the path
a user's file takes, so that the message is checked with its ``file:line: field:`` prefix.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from moesim.scenario_io import ScenarioError, load_scenario
from moesim.specs import Scenario

BASE: dict[str, Any] = {
    "name": "rule-check",
    "model": "mixtral-8x7b",
    "cluster": {"gpu": "h100-sxm", "nodes": 1, "gpus_per_node": 8},
    "parallel": {"tp": 1, "pp": 1, "ep": 8},
    "workload": {"stage": "pretrain", "seq_len": 4096, "global_batch": 64},
}


def merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, mapping by mapping; a None value deletes the key."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def key_lines(text: str) -> dict[str, int]:
    """Line (1-based) of each key of a block-style YAML text by its dotted path.

    Independent of ``scenario_io``'s own line tracking, so that the tests check it.
    """
    out: dict[str, int] = {}
    stack: list[tuple[int, str]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        m = re.match(r"^( *)([A-Za-z_]\w*):", line)
        if m is None:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        out[".".join(k for _, k in stack)] = n
    return out


def expected_line(text: str, field: str) -> int | None:
    """The line an error about ``field`` should point at: the deepest key of it in the file."""
    lines = key_lines(text)
    parts = field.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in lines:
            return lines[key]
    return None


class ScenarioFiles:
    """Writes scenario dicts as YAML under a temp dir and loads them the way the CLI does."""

    def __init__(self, root: Path):
        self.root = root
        self.count = 0

    def write(self, data: dict[str, Any] | str) -> Path:
        self.count += 1
        path = self.root / f"scenario-{self.count}.yaml"
        text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)
        return path

    def load(self, update: dict[str, Any] | None = None, base: dict[str, Any] = BASE) -> Scenario:
        return load_scenario(self.write(merged(base, update or {})))

    def error(
        self,
        update: dict[str, Any],
        field: str,
        *fragments: str,
        base: dict[str, Any] = BASE,
    ) -> str:
        """Load a scenario that must fail; check ``file:line: field:`` and the message parts."""
        path = self.write(merged(base, update))
        with pytest.raises(ScenarioError) as info:
            load_scenario(path)
        message = str(info.value)
        line = expected_line(path.read_text(), field)
        assert line is not None, f"{field} is not in the file: the test is wrong"
        assert f"{path}:{line}: {field}" in message, message
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in {message!r}"
        return message
