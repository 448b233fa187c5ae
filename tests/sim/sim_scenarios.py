"""Scenarios for the simulator tests, built from dicts the way a scenario file is read."""

from __future__ import annotations

import copy
from typing import Any

from moesim.scenario_io import scenario_from_dict
from moesim.specs import Scenario

# Mixtral 8x7B on two 8-GPU nodes: pp 2, one EP group of 8 per stage (on NVLink), dp 8.
SMALL_MOE: dict[str, Any] = {
    "name": "mixtral-16xh100-small",
    "model": "mixtral-8x7b",
    "cluster": {"gpu": "h100-sxm", "nodes": 2, "gpus_per_node": 8},
    "parallel": {"tp": 1, "pp": 2, "ep": 8, "zero_stage": 1, "schedule": "1f1b"},
    "routing": {"distribution": "uniform", "seed": 0},
    "workload": {"stage": "pretrain", "seq_len": 1024, "global_batch": 32},
}


def build(base: dict[str, Any] = SMALL_MOE, **sections: dict[str, Any]) -> Scenario:
    """``base`` with each named section updated key by key (``parallel={"pp": 4}``); a
    ``workload`` is replaced whole (its keys depend on its stage)."""
    d = copy.deepcopy(base)
    for key, update in sections.items():
        if isinstance(update, dict) and isinstance(d.get(key), dict) and key != "workload":
            d[key].update(update)
        else:
            d[key] = update
    return scenario_from_dict(d)
