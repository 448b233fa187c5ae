"""Sweep expansion: grid and zip, dotted keys, names, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.scenario_io import ScenarioError
from moesim.sweep import expand, set_dotted, sweep_from_dict

SCENARIOS = Path(__file__).parent.parent / "scenarios"


def test_grid_crosses_and_zip_varies_together():
    spec = sweep_from_dict(
        {
            "base": "mixtral-8x7b-pretrain-256xh100.yaml",
            "grid": {"parallel.ep": [1, 8], "routing.skew": [0.0, 1.0]},
            "zip": {"cluster.nodes": [16, 32], "parallel.dp": [32, 64]},
        },
        base_dir=SCENARIOS,
    )
    points = list(expand(spec))
    assert spec.size == len(points) == 8
    for params, scenario in points:
        assert scenario["parallel"]["ep"] == params["parallel.ep"]
        assert scenario["cluster"]["nodes"] * 8 == scenario["parallel"]["dp"] * 4  # zipped
        assert scenario["routing"]["skew"] == params["routing.skew"]
    assert len({s["name"] for _, s in points}) == 8


def test_set_dotted_creates_and_refuses_non_mappings():
    d = {"cluster": {"gpu": "h100-sxm"}}
    set_dotted(d, "routing.skew", 1.2)
    assert d["routing"] == {"skew": 1.2}
    with pytest.raises(ScenarioError, match=r"cluster\.gpu\.hbm_GB"):
        set_dotted(d, "cluster.gpu.hbm_GB", 100)


def test_sweep_errors():
    with pytest.raises(ScenarioError, match="base"):
        sweep_from_dict({"grid": {"parallel.ep": [1]}})
    with pytest.raises(ScenarioError, match="non-empty list"):
        sweep_from_dict({"base": {}, "grid": {"parallel.ep": 8}})
    with pytest.raises(ScenarioError, match="same length"):
        sweep_from_dict({"base": {}, "zip": {"a": [1, 2], "b": [1]}})
