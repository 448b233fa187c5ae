"""Fixture published cases: tiny catalog models that simulate in milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

SCENARIO = """\
name: {id}
model: tiny-moe
cluster: {{gpu: h100-sxm, nodes: 1, gpus_per_node: 8}}
parallel: {{tp: 1, pp: 1, ep: {ep}}}
workload: {{stage: pretrain, seq_len: 256, global_batch: 16}}
"""

EXPECT = """\
expect:
  class: {cls}
  metric: {metric}
  value: {value}
  tolerance: 0.15
  source: "fixture: no publication"
  assumptions: ["none"]
"""


def make_case_text(
    case_id: str = "c",
    cls: str = "moe_training",
    metric: str = "step_time_s",
    value: str | float = 0.001,
    ep: int = 8,
    extra: str = "",
) -> str:
    return (
        SCENARIO.format(id=case_id, ep=ep)
        + EXPECT.format(cls=cls, metric=metric, value=value)
        + extra
    )


@pytest.fixture
def write_case(tmp_path: Path) -> Callable[..., Path]:
    """``write_case("sub/id", text=None, **case_text kwargs)`` -> the file's path."""

    def write(rel: str = "c", text: str | None = None, **kw) -> Path:
        path = tmp_path / f"{rel}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text if text is not None else make_case_text(Path(rel).name, **kw))
        return path

    return write


@pytest.fixture
def case_text() -> Callable[..., str]:
    """The text of a fixture case (test modules cannot import conftest by name: pytest keeps
    several conftest modules apart)."""
    return make_case_text


@pytest.fixture
def scenario_text() -> str:
    """A fixture case's scenario part alone (no expect block)."""
    return SCENARIO.format(id="c", ep=8)
