"""The calibration profile schema and the shipped default."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from moesim.sim.profile import (
    DEFAULT_PROFILE_PATH,
    OP_CLASSES,
    Curve,
    default_profile,
    load_profile,
    resolve_profile,
)


def test_default_profile_loads_and_every_number_names_its_source():
    p = default_profile()
    assert set(OP_CLASSES) <= set(p.compute)
    raw = json.loads(DEFAULT_PROFILE_PATH.read_text())

    def walk(node):
        if isinstance(node, dict):
            if "value" in node or "points" in node:
                assert node.get("source"), node
            for v in node.values():
                walk(v)

    walk(raw)


def test_curve_interpolates_in_log_size_and_is_flat_outside():
    c = Curve(x="flops", points=[(1e6, 0.1), (1e10, 0.5)], source="test")
    assert c(1e3) == 0.1 and c(1e12) == 0.5
    assert c(1e8) == pytest.approx(0.3)


def test_curve_rejects_efficiency_above_one():
    with pytest.raises(ValidationError):
        Curve(x="flops", points=[(1e6, 1.2)], source="test")


def test_profile_resolves_a_json_path_and_rejects_a_missing_one(tmp_path):
    path = tmp_path / "mine.json"
    raw = json.loads(DEFAULT_PROFILE_PATH.read_text())
    raw["device"] = "mine"
    path.write_text(json.dumps(raw))
    assert resolve_profile(str(path)).device == "mine"
    assert load_profile(path).device == "mine"
    assert resolve_profile(None, "no-such-gpu").device == "default"
    with pytest.raises(FileNotFoundError):
        resolve_profile(str(tmp_path / "absent.json"))
