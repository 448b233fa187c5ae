"""Property (issue 16): whatever a user does to a shipped scenario (a field's type, sign or
magnitude changed, a key removed or misspelt, the YAML written in another form, truncated or
with a tab, the trace sent to a folder, a device, a missing folder, a symlink loop or the
input itself), ``validate`` and ``simulate`` answer with exit code 0 or 2, never a traceback,
and within a time bound. Derandomized: the same examples on every run; few of them, for CI."""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli.conftest import run_main

ROOT = Path(__file__).parents[2]
SHIPPED = [
    "scenarios/mixtral-8x7b-pretrain-256xh100.yaml",
    "scenarios/pretrain/llama-2-13b-256xh100.yaml",
    "scenarios/serving/mixtral-8x7b-decode-8xh100.yaml",
    "scenarios/post-training/qwen3-30b-a3b-sft-64xh100.yaml",
]
#: one command on one file must answer in this time (they take 0.1-1.5 s here)
BOUND_S = 60.0
SETTINGS = settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ODD_VALUES = ["abc", [1, 2], {"x": 1}, None, True, 1.5, "", -0.0, "1e3", "0x10", "010"]
WILD_FACTORS = [0, -1, 1e-9, 1e3, 1e9, 1e300, math.inf, math.nan]
MILD_FACTORS = [0.5, 2, 3]


def _leaves(d: Any, path: tuple = ()) -> list[tuple]:
    """Key paths of every value that is not a mapping (lists count as one value)."""
    if isinstance(d, dict):
        return [p for k, v in d.items() for p in _leaves(v, (*path, k))] or [path]
    return [path]


def _get(d: dict, path: tuple) -> Any:
    for k in path:
        d = d[k]
    return d


def _set(d: dict, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


def _scale(value: Any, factor: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return factor
    scaled = value * factor
    if isinstance(value, int) and math.isfinite(scaled) and abs(scaled) < 1e18:
        return int(scaled)
    return scaled


@st.composite
def mutated(draw, wild: bool) -> tuple[str, str]:
    """(name of the shipped file, the text of a mutated copy)."""
    name = draw(st.sampled_from(SHIPPED))
    data = yaml.safe_load((ROOT / name).read_text())
    path = draw(st.sampled_from(_leaves(data)))
    kind = draw(st.sampled_from(["type", "sign", "magnitude", "delete", "unknown", "none"]))
    if kind == "type":
        _set(data, path, draw(st.sampled_from(ODD_VALUES)))
    elif kind == "sign":
        value = _get(data, path)
        _set(data, path, -value if isinstance(value, int | float) else -1)
    elif kind == "magnitude":
        factors = WILD_FACTORS if wild else MILD_FACTORS
        _set(data, path, _scale(_get(data, path), draw(st.sampled_from(factors))))
    elif kind == "delete":
        parent = _get(data, path[:-1]) if len(path) > 1 else data
        parent.pop(path[-1], None)
    elif kind == "unknown":
        parent = _get(data, path[:-1]) if len(path) > 1 else data
        parent[f"{path[-1]}_typo"] = 1
    form = draw(st.sampled_from(["block", "flow", "json", "tab", "truncated", "dup", "garbage"]))
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=form == "flow")
    if form == "json":
        import json

        text = json.dumps(data, allow_nan=True)
    elif form == "tab":
        text = text.replace("\n  ", "\n\t", 1)
    elif form == "truncated":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif form == "dup":
        text += f"name: again-{name}\n"
    elif form == "garbage":
        text += draw(st.sampled_from(["\x00\x01", "[unclosed", "a: *nowhere", "- list\n", "}"]))
    return name, text


def _answers(*args: str | Path) -> None:
    t0 = time.perf_counter()
    r = run_main(*args)
    elapsed = time.perf_counter() - t0
    assert r.returncode in (0, 2), (args, r.output[-2000:])
    assert "Traceback" not in r.output, r.output[-2000:]
    if r.returncode == 2:
        assert r.stderr.strip(), "exit 2 with no message"
    assert elapsed < BOUND_S, (args, elapsed)


@SETTINGS
@given(case=mutated(wild=True))
def test_validate_answers_any_mutation_of_a_shipped_scenario(case: tuple[str, str]) -> None:
    name, text = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(name).name
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        _answers("validate", path)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
@settings(SETTINGS, max_examples=12)
@given(
    case=mutated(wild=False),
    trace=st.sampled_from(["file", "folder", "devnull", "no-folder", "loop", "input", None]),
)
def test_simulate_answers_mild_mutations_and_odd_trace_paths(
    case: tuple[str, str], trace: str | None
) -> None:
    name, text = case
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        path = d / Path(name).name
        path.write_text(text, encoding="utf-8")
        (d / "loop").symlink_to(d / "loop")
        targets = {
            "file": d / "t.json",
            "folder": d,
            "devnull": Path(os.devnull),
            "no-folder": d / "no" / "t.json",
            "loop": d / "loop",
            "input": path,
        }
        args: list[str | Path] = ["simulate", path]
        if trace is not None:
            args += ["--trace", targets[trace]]
        _answers(*args)
        if trace == "input":
            assert path.read_text() == text  # never written over
        assert not list(d.glob("*.tmp")) and not list(d.glob(".*.tmp"))
