"""A small MoE scenario built from a dict, for spec rules that need a whole scenario."""

from __future__ import annotations

import copy
from typing import Any

from moesim.scenario_io import scenario_from_dict
from moesim.specs import Scenario

BASE: dict[str, Any] = {
    "name": "mixtral-16xh100",
    "model": "mixtral-8x7b",
    "cluster": {"gpu": "h100-sxm", "nodes": 2, "gpus_per_node": 8},
    "parallel": {"tp": 1, "pp": 2, "ep": 8},
    "workload": {"stage": "pretrain", "seq_len": 1024, "global_batch": 32},
}


def moe_scenario(**sections: dict[str, Any]) -> Scenario:
    """``BASE`` with each named section replaced whole (``cluster={...}``)."""
    d = copy.deepcopy(BASE)
    d.update(copy.deepcopy(sections))
    return scenario_from_dict(d)
